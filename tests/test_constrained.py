"""Constrained decoding (`models.constrain`): answers that are JSON keeping a schema, from
batch generation and from the server (the official `openai` client's `response_format`, and an
extract task's own schema by default). A tiny random model never writes JSON by itself, so
each valid answer here is the constraint's doing."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

import whetstone
from serve_helpers import running
from whetstone.errors import InvalidInput
from whetstone.models import base
from whetstone.models.constrain import SchemaError
from whetstone.models.generate import generate
from whetstone.serve import openai_api as api
from whetstone.serve.app import create_app
from whetstone.serve.settings import Settings

# Bounded (short strings, an enum, a ranged integer, no extra keys), so that even a random
# model's answer is complete within the budget.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "kind": {"enum": ["home", "work"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
    },
    "required": ["city", "kind", "n", "ok"],
    "additionalProperties": False,
}
CHATS = [[{"role": "user", "content": f"where is parcel {i}?"}] for i in range(3)]


def parses_and_keeps(text: str, schema: dict[str, Any] = SCHEMA) -> None:
    jsonschema.validate(json.loads(text), schema)


def not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


@pytest.fixture(scope="module")
def tiny(tiny_base_dir: Path) -> tuple[Any, Any]:
    return base.load(base.resolve(str(tiny_base_dir)))


def test_generated_answers_keep_the_schema(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    free = generate(model, tok, CHATS, max_new_tokens=48)
    assert all(not_json(g.text) for g in free)  # the model alone writes no JSON
    constrained = generate(model, tok, CHATS, max_new_tokens=48, schema=SCHEMA)
    for g in constrained:
        parses_and_keeps(g.text)
        assert g.output_tokens < 48  # it ended (a stop id), not cut by the budget
        assert g.confidence < 0  # the model's own log-probabilities, not the mask's


def test_constrained_and_free_rows_share_a_batch(tiny: tuple[Any, Any]) -> None:
    """Per-row constraints: a free row in a batch with constrained ones answers as it does
    alone, and each constrained row keeps its schema."""
    model, tok = tiny
    alone = generate(model, tok, CHATS[1:2], max_new_tokens=24)
    other = {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]}
    mixed = generate(
        model, tok, CHATS, max_new_tokens=24, schemas=[SCHEMA, None, other], share_prefix=False
    )
    parses_and_keeps(mixed[0].text)
    assert mixed[1].text == alone[0].text
    parses_and_keeps(mixed[2].text, other)
    assert set(json.loads(mixed[2].text)) == {"b"}


def test_keys_come_in_the_schemas_order(tiny: tuple[Any, Any]) -> None:
    """The grammar writes keys as `properties` lists them (an extract task's schema lists its
    fields in the order they are taught), not sorted: the first key here sorts last."""
    model, tok = tiny
    ordered = {
        "type": "object",
        "properties": {"zip": {"type": "boolean"}, "city": {"type": "boolean"}},
        "required": ["zip", "city"],
        "additionalProperties": False,
    }
    for g in generate(model, tok, CHATS, max_new_tokens=24, schema=ordered):
        assert list(json.loads(g.text)) == ["zip", "city"]


def _accepts(tok: Any, grammar: Any, text: str) -> bool:
    c = grammar.start()
    for t in tok.encode(text, add_special_tokens=False):
        c.advance(t)
        if c.error is not None:
            return False
    return True


def test_an_extract_tasks_own_constraint_takes_keys_in_any_order(tiny: tuple[Any, Any]) -> None:
    """A task's constraint (`predict.answer_schema`) lets an adapter write the fields in its
    own order, as it was taught (the order values appear in the input), while a request's
    json_schema keeps the schema's order, as OpenAI's structured outputs do. Unknown keys,
    wrong value types and whitespace are refused either way."""
    from whetstone.models.constrain import compile_schema
    from whetstone.predict import answer_schema
    from whetstone.records import Kind, Task

    model, tok = tiny
    task = Task(name="parcels", kind=Kind.extract, schema=SCHEMA)
    stops = frozenset({tok.eos_token_id})
    own = compile_schema(tok, stops, answer_schema(task, taught=True))
    ordered = compile_schema(tok, stops, SCHEMA)
    in_order, reordered = '{"city":"Oslo","kind":"home"', '{"kind":"home","city":"Oslo"'
    assert _accepts(tok, own, in_order) and _accepts(tok, own, reordered)
    assert _accepts(tok, ordered, in_order) and not _accepts(tok, ordered, reordered)
    for bad in ('{"town":"Oslo"', '{"n":"12"', '{"city": "Oslo"'):
        assert not _accepts(tok, own, bad), bad
    for g in generate(
        model, tok, CHATS, max_new_tokens=48, schema=answer_schema(task, taught=True)
    ):
        keeps_fields(g.text)
    # The base model was never taught an order: the schema's leads it.
    assert answer_schema(task, taught=False) == SCHEMA


def test_any_order_reaches_nested_objects_and_keeps_each_schema(tiny: tuple[Any, Any]) -> None:
    """Nested objects take their keys in any order too (references are key-sorted all the
    way down); a key in another script is written as training writes it; a property the
    schema forbids (`false`) is refused; extra keys come only where the schema allows them;
    a value may refer to the root's `$defs`."""
    from whetstone.models.constrain import any_key_order, compile_schema

    _, tok = tiny
    stops = frozenset({tok.eos_token_id})
    schema = {
        "type": "object",
        "$defs": {"code": {"type": "string", "maxLength": 4}},
        "properties": {
            "straße": {"type": "string"},
            "place": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"$ref": "#/$defs/code"}},
                "additionalProperties": False,
            },
            "gone": False,
        },
        "additionalProperties": False,
    }
    own = compile_schema(tok, stops, any_key_order(schema))
    assert _accepts(tok, own, '{"place":{"zip":"0150","city":"Oslo"},"straße":"Storgata"}')
    assert not _accepts(tok, own, '{"stra\\u00dfe":"x"')  # not as training writes it
    assert not _accepts(tok, own, '{"gone":"x"')
    assert not _accepts(tok, own, '{"place":{"zip":"01500"')  # the $ref's maxLength holds
    assert not _accepts(tok, own, '{"other":"x"')
    open_schema = {k: v for k, v in schema.items() if k != "additionalProperties"}
    assert _accepts(tok, compile_schema(tok, stops, any_key_order(open_schema)), '{"other":1}')


def test_a_schema_that_cannot_constrain_is_refused(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    with pytest.raises(SchemaError, match="strin"):
        generate(
            model, tok, CHATS, schema={"type": "object", "properties": {"a": {"type": "strin"}}}
        )


def test_response_format_shapes() -> None:
    assert api.response_format_refusal({"type": "json_object"}) is None
    assert (
        api.response_format_refusal({"type": "json_schema", "json_schema": {"name": "x"}}) is None
    )
    assert api.response_format_refusal({"type": "json_schema"}) is not None
    assert "'yaml'" in (api.response_format_refusal({"type": "yaml"}) or "")
    assert api.response_schema({"type": "text"}) is None
    assert api.response_schema(None) is None
    spec = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}
    assert api.response_schema(spec) == SCHEMA


def test_constrain_extract_setting_is_checked() -> None:
    assert Settings.load({"constrain_extract": ["addresses"]}).constrains("addresses")
    assert not Settings.load({"constrain_extract": ["addresses"]}).constrains("other")
    assert not Settings.load({"constrain_extract": False}).constrains("addresses")
    assert Settings().constrains("addresses")  # on by default
    with pytest.raises(InvalidInput, match="constrain_extract"):
        Settings.load({"constrain_extract": "yes"})


# ---- through the server, with the official client --------------------------------------


@pytest.fixture(scope="module")
def served(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("serve-constrained")
    p = whetstone.init(tmp / "proj", base_model=str(tiny_base_dir))
    p.create_task("support", "generate", instruction="Answer briefly.")
    p.create_task("parcels", "extract", schema=SCHEMA)
    p.create_task("sentiment", "classify", labels=["pos", "neg"])
    # A valid JSON Schema whose keyword the grammar engine lacks.
    p.create_task("odd", "extract", schema={"type": "object", "not": {"required": ["x"]}})
    app = create_app(p, Settings(max_wait_ms=200))  # constrain_extract: the default
    with running(app) as url:
        yield url
    p.close()


def chat(url: str, **kw: Any) -> Any:
    kw.setdefault("model", "base")
    kw.setdefault("messages", CHATS[0])
    kw.setdefault("max_tokens", 48)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    return client.chat.completions.create(**kw)


def json_schema(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "parcel", "schema": schema}}


def test_json_schema_response_format(served: str) -> None:
    free = chat(served).choices[0].message.content
    assert not_json(free)
    choice = chat(served, response_format=json_schema(SCHEMA)).choices[0]
    parses_and_keeps(choice.message.content)
    assert choice.finish_reason == "stop"
    streamed = chat(served, response_format=json_schema(SCHEMA), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    parses_and_keeps(text)
    completion = openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    done = completion.completions.create(
        model="base",
        prompt="hello",
        max_tokens=48,
        extra_body={"response_format": json_schema(SCHEMA)},
    )
    parses_and_keeps(done.choices[0].text)


def test_json_object_response_format(served: str) -> None:
    """Any JSON object. A random model opens one and never closes it within a small budget
    (OpenAI's json_object is cut by max_tokens the same way, finish_reason "length"), so an
    object that must close is asked for through a schema with bounded keys."""
    choice = chat(served, response_format={"type": "json_object"}, max_tokens=8).choices[0]
    assert choice.message.content.startswith("{")
    assert not chat(served, max_tokens=8).choices[0].message.content.startswith("{")
    closed = {
        "type": "object",
        "properties": {"a": {"type": "boolean"}},
        "additionalProperties": False,
    }
    answer = chat(served, response_format=json_schema(closed)).choices[0]
    assert answer.finish_reason == "stop"
    assert isinstance(json.loads(answer.message.content), dict)


def keeps_fields(text: str, schema: dict[str, Any] = SCHEMA) -> None:
    """JSON whose keys are the schema's, each value keeping its field's schema: what an extract
    task's own constraint promises (keys in any order, `required` left to the task's checks)."""
    jsonschema.validate(json.loads(text), {k: v for k, v in schema.items() if k != "required"})


def test_an_extract_task_answers_in_its_schema_by_default(served: str) -> None:
    """`serve: constrain_extract: true` (the default): the task's fields, in any order."""
    keeps_fields(chat(served, model="parcels").choices[0].message.content)
    # {"type": "text"} asks for free text, even on an extract task
    free = chat(served, model="parcels", response_format={"type": "text"})
    assert not_json(free.choices[0].message.content)


def test_a_tasks_schema_the_grammar_cannot_use_leaves_answers_free(served: str) -> None:
    """The client asked for nothing: no 400 for the task's own schema, a free answer."""
    answer = chat(served, model="odd", max_tokens=8).choices[0].message.content
    assert not answer.startswith("{")  # a constrained one opens its object at once


def test_a_clients_schema_keeps_its_order(served: str) -> None:
    """Whetstone's any-order keyword is for a task's own schema; in a client's it is dropped,
    so the answer keeps the order `properties` lists."""
    from whetstone.models.constrain import ANY_KEY_ORDER

    ordered = {**SCHEMA, ANY_KEY_ORDER: True}
    text = chat(served, response_format=json_schema(ordered)).choices[0].message.content
    assert list(json.loads(text)) == list(SCHEMA["properties"])


def test_constrained_and_free_requests_in_one_batch(served: str) -> None:
    """Requests arriving together (max_wait_ms gathers them into one prefill) keep their own
    constraint or none: the free one answers as it does alone."""
    alone = chat(served).choices[0].message.content
    answers: dict[str, str] = {}

    def ask(name: str, **kw: Any) -> None:
        answers[name] = chat(served, **kw).choices[0].message.content

    threads = [
        threading.Thread(
            target=ask, args=("schema",), kwargs={"response_format": json_schema(SCHEMA)}
        ),
        threading.Thread(target=ask, args=("free",)),
        threading.Thread(target=ask, args=("extract",), kwargs={"model": "parcels"}),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parses_and_keeps(answers["schema"])
    keeps_fields(answers["extract"])
    assert answers["free"] == alone


def test_an_invalid_schema_is_a_400_naming_response_format(served: str) -> None:
    for bad in (
        json_schema({"type": "object", "properties": {"a": {"type": "strin"}}}),
        {"type": "json_schema"},
        {"type": "yaml"},
    ):
        with pytest.raises(openai.BadRequestError) as e:
            chat(served, response_format=bad)
        body: dict[str, Any] = e.value.body  # type: ignore[assignment]
        assert body["param"] == "response_format", body
        assert "response_format" in body["message"]


def test_json_formats_are_refused_where_labels_answer(served: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        chat(served, model="sentiment", response_format={"type": "json_object"})
    assert e.value.body["param"] == "response_format"  # type: ignore[index]
