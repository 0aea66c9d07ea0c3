"""A classify task's answer by label likelihood, not by generation: every label is scored
(`models.label_scoring`, on the engine thread, see `Engine.score`) and the most likely one is
the answer, `finish_reason` "stop". It is captured like any answer (`answer.Answer`), its
confidence the log-probability of the chosen label, and streamed as one delta then the stop
chunk. Asked for `logprobs`, the choice carries the label distribution: the label is the one
"token" and `top_logprobs` ranks the labels (all of them unless `top_logprobs` says fewer).
"""

from __future__ import annotations

import logging

from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from whetstone import prompts
from whetstone.records import Input, Kind
from whetstone.serve import openai_api as api
from whetstone.serve.answer import Answer
from whetstone.serve.answer import Kind as Endpoint
from whetstone.serve.engine import Delta, Done
from whetstone.serve.errors import APIError
from whetstone.serve.routes import Route
from whetstone.serve.state import Services
from whetstone.serve.streaming import Stream

log = logging.getLogger("whetstone.serve")


def by_labels(route: Route) -> bool:
    """Whether `route` answers by label likelihood: a classify task that has labels."""
    task = route.task
    return task is not None and task.kind == Kind.classify and bool(task.labels)


async def answer(
    svc: Services,
    req: api.Sampling,
    inp: Input,
    route: Route,
    ids: list[int],
    kind: Endpoint,
    started: float,
) -> Response:
    """Score the labels for `inp` and answer with the best, whole or streamed."""
    a = await scored(svc, req, inp, route, ids, kind, started)
    return Stream(a).response() if req.stream else await a.whole()


async def scored(
    svc: Services,
    req: api.Sampling,
    inp: Input,
    route: Route,
    ids: list[int],
    kind: Endpoint,
    started: float,
) -> Answer:
    """The answer with the best label, its events (the label, then the end) queued."""
    task = route.task
    assert task is not None and task.labels, "by_labels(route) is checked first"
    ctx = svc.engine.context_length
    if len(ids) >= ctx:
        raise APIError(
            400,
            f"this model's maximum context length is {ctx} tokens; the prompt has {len(ids)}",
            code="context_length_exceeded",
            param="messages" if kind == "chat" else "prompt",
        )
    try:
        scores = await run_in_threadpool(
            svc.engine.score,
            route.adapter,
            prompts.chat(task, inp),
            task.labels,
            svc.tokenizer_lock,
        )
    except APIError:
        raise
    except Exception as e:  # a bug or out of memory: this request fails, the server serves on
        log.exception("label scoring failed")
        raise APIError(500, f"label scoring failed: {e}", code="server_error") from None
    a = Answer(svc, req, inp, route, ids, kind, started, max_tokens=1, stops=[])
    # Each label's log-probability under the distribution over labels: the chosen one's is
    # the confidence, so the normaliser is its log-likelihood minus that.
    norm = scores.log_likelihoods[scores.label] - scores.confidence
    logprobs = {lab: ll - norm for lab, ll in scores.log_likelihoods.items()}
    if isinstance(req, api.ChatRequest) and req.logprobs:
        a.logprobs = api.chat_label_logprobs(scores.label, logprobs, req.top_logprobs)
    elif isinstance(req, api.CompletionRequest) and req.logprobs is not None:
        a.logprobs = api.completion_label_logprobs(scores.label, logprobs, req.logprobs)
    # The events a generated answer would have: the whole label at once, then the end.
    a.events.put_nowait(Delta(scores.label))
    a.events.put_nowait(
        Done(
            text=scores.label,
            finish_reason="stop",
            prompt_tokens=len(ids),
            completion_tokens=scores.tokens,
            confidence=scores.confidence,
        )
    )
    return a
