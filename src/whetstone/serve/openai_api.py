"""The request bodies the server accepts and the response bodies it returns, in the shapes of
OpenAI's chat completions, completions and models APIs. Every request field is implemented,
harmless by its meaning (`HARMLESS`), or refused with a 400 naming it (`NEUTRAL`, unknown
fields, tool calls in the history): none is accepted and ignored."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from whetstone.errors import from_validation
from whetstone.models.constrain import ANY_KEY_ORDER, JSON_OBJECT
from whetstone.records import Message
from whetstone.serve.errors import APIError
from whetstone.serve.token_text import TokenLogprob
from whetstone.storable import MAX_ID, TooDeep, find_unstorable, loads_json


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # harmless: the participant's name, not shown to the model
    refusal: str | None = None  # harmless: an earlier answer's refusal, sent back as history
    # Refused (see `check`): tool calls are not implemented, so neither is their history.
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    function_call: Any = None

    def to_message(self, index: int) -> Message:
        if isinstance(self.content, list):
            if any(p.type != "text" or p.text is None for p in self.content):
                raise APIError(
                    400,
                    "only text content parts are supported",
                    code="invalid_value",
                    param=f"messages.{index}.content",
                )
            text = "".join(p.text or "" for p in self.content)
        else:
            text = self.content or ""
        return Message(role=self.role, content=text)

    def check(self, index: int) -> None:
        """Tool and function calls in the history are refused, never dropped without a word."""
        where = f"messages.{index}"
        if self.role == "tool":
            raise unsupported(f"{where}.role", "messages of role 'tool' (tools are not supported)")
        for name in ("tool_calls", "tool_call_id", "function_call"):
            if getattr(self, name):
                raise unsupported(f"{where}.{name}", f"{name} (tools are not supported)")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # harmless: no obfuscation padding is sent


def unsupported(param: str, what: str) -> APIError:
    return APIError(
        400,
        f"{param}: this server does not support {what}; see README, OpenAI options",
        code="unsupported_parameter",
        param=param,
    )


def response_format_refusal(value: dict[str, Any] | None) -> str | None:
    """Why `response_format` is refused, or None: `text`, `json_object` and `json_schema`
    (OpenAI's shape, `{"json_schema": {"name": ..., "schema": {...}, "strict": ...}}`) are
    implemented by constrained decoding (`response_schema`)."""
    value = value or {}
    kind = value.get("type", "text")
    if kind in ("text", "json_object"):
        return None
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            return "response_format json_schema without a json_schema object holding a schema"
        return None
    return f"response_format {kind!r} (only 'text', 'json_object' and 'json_schema')"


def response_schema(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema an answer must keep under an accepted `response_format` (any JSON
    object for `json_object`, and for a `json_schema` without a schema), or None for text.
    `strict` changes nothing: every constrained answer keeps its schema."""
    value = value or {}
    kind = value.get("type", "text")
    if kind == "json_object":
        return JSON_OBJECT
    if kind == "json_schema":
        schema = value["json_schema"].get("schema")
        if isinstance(schema, dict):
            # Whetstone's own keyword is for a task's schema, not a client's (whose keys keep
            # the schema's order, as OpenAI's structured outputs do).
            schema = {k: v for k, v in schema.items() if k != ANY_KEY_ORDER}
        return schema if schema is not None else JSON_OBJECT
    return None


# Every request field is in exactly one of these (tests/test_serve_openai_options.py walks
# the models' fields), so none can be accepted and silently ignored.
IMPLEMENTED = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "n",
        "seed",
        "logprobs",
        "top_logprobs",
        "response_format",  # text, json_object, json_schema: `response_format_refusal`
        "task",
        "whetstone_route",
    }
)
# Accepted and, by their meaning, nothing to do: who the user is (`user`, `safety_identifier`),
# labels for the caller's own bookkeeping (`metadata`), OpenAI's storage, tier and caching
# (`store`: Whetstone captures by its own rules, see README), a setting of tools, which are
# refused anyway (`parallel_tool_calls`).
HARMLESS = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        "parallel_tool_calls",
    }
)
# Refused with a 400 naming the field unless they hold the value that asks for nothing.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "logit_bias": (None, {}),
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
}
REFUSED = frozenset(NEUTRAL)


class Sampling(BaseModel):
    # Unknown fields are refused (`parse` names them): an option we do not know is one we
    # would otherwise ignore.
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Several answers to the prompt, sampled (temperature 1 unless given, as OpenAI's default).
    n: int | None = Field(default=None, ge=1, le=16)
    # Sampling draws from a generator of this seed: same seed, prompt and settings, same
    # answer (choice i of `n` uses seed + i).
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    response_format: dict[str, Any] | None = None
    # Whetstone's own: the task a `base` answer is captured under (extra_body={"task": ...}).
    task: str | None = None
    # Whetstone's own: workhorse | hero | cascade for this request, instead of the task's
    # route in whetstone.yaml (or the header X-Whetstone-Route); checked in `serve.cascade`.
    whetstone_route: str | None = Field(default=None, max_length=50)
    # Harmless (see HARMLESS).
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    parallel_tool_calls: bool | None = None
    # Refused unless neutral (see NEUTRAL).
    logit_bias: dict[str, float] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None

    def refuse_unsupported(self) -> None:
        """A 400 naming the first option asked for that this server does not do."""
        for name in sorted(REFUSED & set(type(self).model_fields)):
            if getattr(self, name) not in NEUTRAL[name]:
                raise unsupported(name, name)
        why = response_format_refusal(self.response_format)
        if why is not None:
            raise unsupported("response_format", why)

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def token_logprobs(self) -> int | None:
        """How many alternatives each token's log-probability comes with (None: none)."""
        return None

    @property
    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(
                400, "stop takes up to 4 non-empty strings", code="invalid_value", param="stop"
            )
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # Token log-probabilities of a generated answer; a classify task's label distribution.
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        for i, m in enumerate(self.messages):
            m.check(i)
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(
                400,
                "top_logprobs: needs logprobs set to true",
                code="invalid_value",
                param="top_logprobs",
            )

    @property
    def token_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(Sampling):
    prompt: str | list[str]  # a list: one answer (or `n`) per prompt, in order
    logprobs: int | None = Field(default=None, ge=0, le=20)  # as ChatRequest's top_logprobs
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None

    @property
    def prompts(self) -> list[str]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if not self.prompt:
            raise APIError(400, "prompt: the list is empty", code="invalid_value", param="prompt")
        if len(self.prompt) > MAX_PROMPTS:
            raise APIError(
                400,
                f"prompt: at most {MAX_PROMPTS} prompts per request, not {len(self.prompt)}",
                code="invalid_value",
                param="prompt",
            )
        return self.prompt

    @property
    def token_logprobs(self) -> int | None:
        return self.logprobs


MAX_PROMPTS = 64


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    record_id: int | str
    rating: int | Literal["up", "down"] | None = None
    reference: str | None = None
    error_category: str | None = Field(default=None, max_length=128)
    comment: str | None = None
    annotator: str | None = Field(default=None, max_length=128)

    @field_validator("record_id")
    @classmethod
    def _record_id(cls, v: int | str) -> int | str:
        """A numeric id (or its digits as text) must be one the store can hold; any other
        text is a record reference (`chatcmpl-...`)."""
        if isinstance(v, str) and not (v.isascii() and v.isdigit()):
            if not v or len(v) > 200:
                raise ValueError("a record reference is 1 to 200 characters")
            return v
        n = int(v)
        if not 0 <= n <= MAX_ID:
            raise ValueError(f"a record id is between 0 and {MAX_ID}")
        return n

    @property
    def thumbs(self) -> int | None:
        """+1 up, -1 down, None not given."""
        if self.rating is None:
            return None
        if isinstance(self.rating, str):
            return 1 if self.rating == "up" else -1
        return 1 if self.rating > 0 else -1


class AdapterRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=200)


def parse(model: type[BaseModel], raw: bytes) -> Any:
    """Parse and validate a JSON body; 400 in the OpenAI shape naming the field otherwise.
    Text the store cannot hold is refused here, at the door: once answered, a request's record
    must be storable, or capture would hold it forever."""
    try:
        data = loads_json(raw)
    except TooDeep as e:
        raise APIError(400, f"the request body is {e}", code="invalid_json") from None
    except ValueError as e:  # not JSON, or not UTF-8
        raise APIError(
            400, f"the request body is not valid JSON: {e}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    bad = find_unstorable(data)
    if bad is not None:
        raise APIError(400, str(bad), code="invalid_value", param=bad.field)
    try:
        parsed = model.model_validate(data)
    except ValidationError as e:
        unknown = [err for err in e.errors() if err["type"] == "extra_forbidden"]
        if unknown:
            name = ".".join(str(p) for p in unknown[0]["loc"])
            raise APIError(
                400,
                f"{name}: unknown field; this server does not support it "
                "(see README, OpenAI options)",
                code="unknown_parameter",
                param=name,
            ) from None
        invalid = from_validation(e)
        raise APIError(
            400, str(invalid), code="invalid_value", param=invalid.field or None
        ) from None
    if isinstance(parsed, Sampling):
        parsed.refuse_unsupported()
    return parsed


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_choice(
    index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish,
        "logprobs": logprobs,
    }


def text_choice(
    index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    return {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}


def chat_completion(
    cid: str, model: str, choices: list[dict[str, Any]], u: dict[str, int], extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": u,
        "whetstone": extra,
    }


def chat_chunk(
    cid: str,
    model: str,
    delta: dict[str, Any],
    finish: str | None,
    u: dict[str, int] | None = None,
    *,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]
        if u is None
        else [],
    }
    if u is not None:
        chunk["usage"] = u
    return chunk


def text_completion(
    cid: str,
    model: str,
    choices: list[dict[str, Any]],
    u: dict[str, int] | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if u is not None:
        body["usage"] = u
    if extra is not None:
        body["whetstone"] = extra
    return body


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def chat_token_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """Generated tokens in the shape of a chat choice's `logprobs`."""
    return {
        "content": [
            {**_entry(t.token, t.logprob), "top_logprobs": [_entry(a, lp) for a, lp in t.top]}
            for t in tokens
        ],
        "refusal": None,
    }


def completion_token_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """Generated tokens in the legacy completions shape (offsets into the answer's text)."""
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
        "text_offset": [t.offset for t in tokens],
    }


def _ranked(logprobs: dict[str, float], top: int | None) -> list[tuple[str, float]]:
    """The labels most likely first (the first of equals in label order), `top` of them."""
    ranked = sorted(logprobs.items(), key=lambda kv: -kv[1])
    return ranked if top is None else ranked[:top]


def chat_label_logprobs(label: str, logprobs: dict[str, float], top: int | None) -> dict[str, Any]:
    """A classify answer's label distribution in the shape of a chat choice's `logprobs`: the
    label is the one "token", and `top_logprobs` ranks the labels (all, unless `top`)."""

    def entry(tok: str, lp: float) -> dict[str, Any]:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode())}

    others = [entry(tok, lp) for tok, lp in _ranked(logprobs, top)]
    return {"content": [{**entry(label, logprobs[label]), "top_logprobs": others}]}


def completion_label_logprobs(label: str, logprobs: dict[str, float], top: int) -> dict[str, Any]:
    """The same for a completion choice, in the legacy completions shape."""
    return {
        "tokens": [label],
        "token_logprobs": [logprobs[label]],
        "top_logprobs": [dict(_ranked(logprobs, top))],
        "text_offset": [0],
    }
