"""Constrained decoding: a token mask from a JSON schema, so an answer is JSON that parses and
keeps the schema.

The grammar work is llguidance's (the library vLLM, SGLang and llama.cpp use for structured
output): it reads the Hugging Face tokenizer itself (byte-level BPE pieces included), compiles
a JSON schema into a grammar in milliseconds and computes a row's allowed tokens lazily (with
applying the mask, 0.3-1 ms a row and token on this project's 2-core CPU; benchmarks/serve.py
--mask-only). Both decoders use this module: batch generation (`models.generate`,
for evaluation and predict) and the serving engine (`serve.engine`, one constraint per row).

A constrained row's next token is chosen among the allowed ones only; its log-probability
(the answer's confidence, a client's `logprobs`) stays the model's own, unmasked, so that a
forced token does not look certain. Once the JSON is complete only a stop id is allowed, so
the answer ends by the usual stop rule (`models.decoding`). JSON is written compactly (no
whitespace between tokens), the way extract answers are taught (`prompts.answer_text`), which
also keeps a weak model from spending its budget on whitespace. An answer can still be cut
short by its token budget (finish reason "length"), as with any decoding.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from whetstone.models.types import Tokenizer

# Any JSON object: OpenAI's `response_format: {"type": "json_object"}`, and an extract task
# without a schema of its own.
JSON_OBJECT: dict[str, Any] = {"type": "object"}

# A vendor keyword (JSON Schema leaves "x-" names to extensions, as llguidance's own
# "x-guidance"): the object's keys may come in any order. JSON Schema itself does not order
# keys, but llguidance's JSON grammar writes them in the order `properties` lists them, and a
# specialist is taught to write an extract answer's keys in the order their values appear in
# the input (`prompts.answer_text`): forced into the schema's order it misplaces fields.
ANY_KEY_ORDER = "x-whetstone-any-key-order"

# Compact JSON on one line (see the module doc): llguidance's JsonCompileOptions.
_OPTIONS: Any = {"whitespace_flexible": False}


def any_key_order(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its keys allowed in any order (`ANY_KEY_ORDER`)."""
    return {**schema, ANY_KEY_ORDER: True}


# Keywords that make an object's keys more than a list of properties: such an object keeps
# the JSON grammar (and the schema's order).
_NOT_A_LIST = ("$ref", "anyOf", "oneOf", "allOf", "not", "if", "patternProperties")


def _listed_object(schema: Any) -> bool:
    """An object schema that is a list of properties (and perhaps extra keys), nothing more."""
    return (
        isinstance(schema, dict)
        and isinstance(schema.get("properties"), dict)
        and bool(schema["properties"])
        and schema.get("type", "object") == "object"
        and not any(k in schema for k in _NOT_A_LIST)
    )


def _lark_text(text: str) -> str:
    """`text` as a Lark string literal (JSON's escaping is Lark's; other scripts stay as
    they are written, as training writes them: `ensure_ascii=False`)."""
    return json.dumps(text, ensure_ascii=False)


def _any_order_lark(schema: dict[str, Any]) -> str | None:
    """A Lark grammar (llguidance's dialect, `%json` for a value) of compact JSON whose
    objects that list their properties take their keys in any order, nested ones too, each
    value keeping its own schema; None when the top is not such an object (any object: the
    JSON grammar already allows any order). What it gives up, so that the model's own order
    stands: `required`, `minProperties`/`maxProperties` (an answer missing a field is caught by
    the task's checks, `prompts.answer_fails_checks`) and a key written twice (which no trained
    specialist does; without extra keys the pairs are at most as many as the fields). Objects
    inside arrays keep the schema's order."""
    if not _listed_object(schema):
        return None
    # Every value's own schema may refer to the root's definitions.
    defs: dict[str, Any] = {k: schema[k] for k in ("$defs", "definitions") if k in schema}
    rules: list[str] = []
    top = _object_rules(schema, defs, rules, "o")
    return "\n".join([f"start: {top}", *rules])


def _value(sub: Any, defs: dict[str, Any], rules: list[str], name: str) -> str:
    """The grammar of one value: an object listing its properties as its own rules, any
    other schema as `%json` (compact, with the root's definitions)."""
    if _listed_object(sub):
        return _object_rules(sub, defs, rules, name)
    body = {**defs, **(sub if isinstance(sub, dict) else {}), "x-guidance": _OPTIONS}
    return f"%json {json.dumps(body, ensure_ascii=False)}"


def _object_rules(schema: dict[str, Any], defs: dict[str, Any], rules: list[str], name: str) -> str:
    """Add the rules of one object with its keys in any order; return its rule's name."""
    pairs = []
    for i, (key, sub) in enumerate(schema["properties"].items()):
        if sub is False:  # a property the schema forbids
            continue
        pair = f"{name}_{i}"
        rules.append(
            f"{pair}: {_lark_text(json.dumps(key, ensure_ascii=False) + ':')} "
            f"{_value(sub, defs, rules, pair + 'v')}"
        )
        pairs.append(pair)
    extra = schema.get("additionalProperties", True)
    bounded = extra is False
    if not bounded:  # keys the schema does not list, as it allows them
        key = f"%json {json.dumps({'type': 'string', 'x-guidance': _OPTIONS})}"
        rules.append(f'{name}_x: {key} ":" {_value(extra, defs, rules, name + "_xv")}')
        pairs.append(f"{name}_x")
    if not pairs:
        rules.append(f'{name}: "{{}}"')
        return name
    rules.append(f"{name}_pair: " + " | ".join(pairs))
    # At most as many pairs as there are fields: an answer ends like one in the schema's order.
    more = "*" if not bounded else f"{{0,{len(pairs) - 1}}}" if len(pairs) > 1 else None
    tail = f' ("," {name}_pair){more}' if more else ""
    rules.append(f'{name}: "{{" ({name}_pair{tail})? "}}"')
    return name


class SchemaError(ValueError):
    """A JSON schema that cannot constrain decoding; the message says why."""


class Grammar:
    """A compiled JSON schema for one tokenizer and its stop ids: made once (a request's
    schema, a task's), then one `Constraint` per answer."""

    def __init__(self, template: Any):
        self._template = template  # an llguidance LLMatcher at the start of the grammar

    def start(self) -> Constraint:
        """A fresh constraint for one answer."""
        return Constraint(self._template.deep_copy())


class Constraint:
    """One answer's place in its grammar: which tokens may come next."""

    def __init__(self, matcher: Any):
        self._matcher = matcher

    def advance(self, token: int) -> None:
        """Take the token chosen. A token the mask did not allow (a forced stop after an
        error) leaves the matcher in its error state, where `mask_rows` allows stop ids only."""
        self._matcher.consume_token(token)

    @property
    def error(self) -> str | None:
        return self._matcher.get_error() if self._matcher.is_error() else None

    def fill(self, bits: torch.Tensor) -> None:
        """Write the allowed next tokens into `bits` (a contiguous CPU int32 row, one bit a
        token)."""
        self._matcher.unsafe_compute_mask_ptr(bits.data_ptr(), bits.numel() * bits.element_size())


def mask_rows(
    logits: torch.Tensor, constraints: Sequence[Constraint | None], stop_ids: frozenset[int]
) -> torch.Tensor:
    """`logits` ([rows, vocab]) with every token a row's constraint forbids at -inf; rows
    without a constraint unchanged. A copy when any row is constrained, else `logits`
    itself. A constraint in an error state (it should not happen) allows its stop ids only,
    ending the answer rather than letting it run on unconstrained."""
    import torch

    rows = [i for i, c in enumerate(constraints) if c is not None]
    if not rows:
        return logits
    vocab = int(logits.shape[-1])
    words = (vocab + 31) // 32
    bits = torch.zeros((len(rows), words), dtype=torch.int32)
    for j, i in enumerate(rows):
        c = constraints[i]
        assert c is not None
        if c.error is None:
            c.fill(bits[j])
    shifts = torch.arange(32, dtype=torch.int32)
    allowed = ((bits.unsqueeze(-1) >> shifts) & 1).view(len(rows), -1)[:, :vocab].bool()
    for j, i in enumerate(rows):
        c = constraints[i]
        if c is not None and (c.error is not None or not allowed[j].any()):
            allowed[j] = False
            allowed[j, [t for t in stop_ids if t < vocab]] = True
    out = logits.clone()
    sel = torch.tensor(rows, device=logits.device)
    out[sel] = out[sel].masked_fill(~allowed.to(logits.device), float("-inf"))
    return out


def advance_rows(constraints: Sequence[Constraint | None], tokens: Sequence[int]) -> None:
    """Every constrained row takes its chosen token."""
    for c, t in zip(constraints, tokens, strict=True):
        if c is not None:
            c.advance(t)


# ---- compiling, cached: a tokenizer's llguidance view takes about a second to build, a
# schema a few milliseconds; a server compiles a task's schema for every request.
_GRAMMARS_KEPT = 128
_lock = threading.Lock()


class _Compiler:
    """A tokenizer's llguidance view (with its stop ids) and the schemas compiled for it."""

    def __init__(self, tok: Tokenizer, stop_ids: frozenset[int]):
        import llguidance.hf

        # Every stop id ends a constrained answer, not only the tokenizer's EOS.
        self.lltok = llguidance.hf.from_tokenizer(
            tok,  # type: ignore[arg-type]
            eos_token=sorted(stop_ids) or None,
        )
        self.grammars: OrderedDict[str, Grammar] = OrderedDict()


_compilers: weakref.WeakKeyDictionary[Any, dict[frozenset[int], _Compiler]] = (
    weakref.WeakKeyDictionary()
)


def compile_schema(tok: Tokenizer, stop_ids: frozenset[int], schema: Any) -> Grammar:
    """The grammar of JSON `schema` for `tok`, whose answers end at `stop_ids`; raise
    `SchemaError` saying why a schema cannot be used (not an object, an unknown type, a
    keyword the grammar cannot honour)."""
    import llguidance

    if not isinstance(schema, dict):
        raise SchemaError(f"a JSON schema is an object, not {type(schema).__name__}")
    try:
        # Not sort_keys: the grammar writes an object's keys in the order `properties` lists
        # them, so two schemas differing only in that order are two grammars.
        text = json.dumps(schema)
    except (TypeError, ValueError) as e:
        raise SchemaError(f"the schema is not JSON: {e}") from None
    with _lock:
        per_tok = _compilers.setdefault(tok, {})
        if stop_ids not in per_tok:
            per_tok[stop_ids] = _Compiler(tok, stop_ids)
        compiler = per_tok[stop_ids]
        found = compiler.grammars.get(text)
        if found is not None:
            compiler.grammars.move_to_end(text)
            return found
    lark = _any_order_lark(schema) if schema.get(ANY_KEY_ORDER) else None
    try:
        if lark is not None:
            grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        else:
            plain = {k: v for k, v in schema.items() if k != ANY_KEY_ORDER}
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(plain), overrides=_OPTIONS
            )
    except ValueError as e:
        raise SchemaError(str(e)) from None
    matcher = llguidance.LLMatcher(compiler.lltok, grammar, log_level=0)
    if matcher.is_error():
        raise SchemaError(matcher.get_error())
    compiled = Grammar(matcher)
    with _lock:
        compiler.grammars[text] = compiled
        while len(compiler.grammars) > _GRAMMARS_KEPT:
            compiler.grammars.popitem(last=False)
    return compiled
