"""The request bodies the server accepts and the response bodies it returns, in the shapes of
OpenAI's chat completions, completions and models APIs. Unknown request fields are ignored,
as OpenAI-compatible servers do; fields we cannot honour (n > 1) are refused."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from whetstone.errors import from_validation
from whetstone.records import Message
from whetstone.serve.errors import APIError
from whetstone.storable import MAX_ID, TooDeep, find_unstorable, loads_json


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None

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


class Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    # Whetstone's own: the task a `base` answer is captured under (extra_body={"task": ...}).
    task: str | None = None
    # Whetstone's own: workhorse | hero | cascade for this request, instead of the task's
    # route in whetstone.yaml (or the header X-Whetstone-Route); checked in `serve.cascade`.
    whetstone_route: str | None = Field(default=None, max_length=50)

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
        return bool((self.stream_options or {}).get("include_usage"))


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # Honoured for classify tasks (the label distribution, see `chat_label_logprobs`);
    # generated answers return none.
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=20)  # as ChatRequest's top_logprobs

    @property
    def text(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise APIError(400, "one prompt per request", code="invalid_value", param="prompt")
            return self.prompt[0]
        return self.prompt


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
        return model.model_validate(data)
    except ValidationError as e:
        invalid = from_validation(e)
        raise APIError(
            400, str(invalid), code="invalid_value", param=invalid.field or None
        ) from None


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    cid: str, model: str, text: str, finish: str, u: dict[str, int], extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": u,
        "whetstone": extra,
    }


def chat_chunk(
    cid: str,
    model: str,
    delta: dict[str, Any],
    finish: str | None,
    u: dict[str, int] | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        if u is None
        else [],
    }
    if u is not None:
        chunk["usage"] = u
    return chunk


def text_completion(
    cid: str,
    model: str,
    text: str,
    finish: str | None,
    u: dict[str, int] | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }
    if u is not None:
        body["usage"] = u
    if extra is not None:
        body["whetstone"] = extra
    return body


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
