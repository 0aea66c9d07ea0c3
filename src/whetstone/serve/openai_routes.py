"""The OpenAI-compatible API: `/v1/chat/completions`, `/v1/completions`, `/v1/models`."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from whetstone import registry
from whetstone.records import Input
from whetstone.serve import cascade, classify
from whetstone.serve import openai_api as api
from whetstone.serve.answer import Answer, Kind, answer_grammar, encode, tokens_to_generate
from whetstone.serve.auth import require_json, require_key
from whetstone.serve.errors import APIError
from whetstone.serve.routes import BASE
from whetstone.serve.state import Services, Svc
from whetstone.serve.streaming import Stream

router = APIRouter(dependencies=[Depends(require_key), Depends(require_json)])


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, svc: Svc) -> Response:
    req = api.parse(api.ChatRequest, await request.body())
    inp = [m.to_message(i) for i, m in enumerate(req.messages)]
    return await complete(svc, request, req, inp, raw=False, kind="chat")


@router.post("/v1/completions")
async def completions(request: Request, svc: Svc) -> Response:
    """A task model sees the prompt as the user's turn of its chat (the way it was trained);
    `base` continues the raw text. A list of prompts is answered prompt by prompt (each its
    own record), in one body whose choices are in prompt order (`n` per prompt)."""
    req = api.parse(api.CompletionRequest, await request.body())
    raw = req.model == BASE and req.task is None
    prompts = req.prompts
    if len(prompts) == 1:
        return await complete(svc, request, req, prompts[0], raw=raw, kind="completion")
    if req.stream:
        raise APIError(
            400,
            "stream: a list of prompts is answered whole; send one prompt per streamed request",
            code="unsupported_parameter",
            param="stream",
        )
    answers = await asyncio.gather(
        *(complete(svc, request, req, text, raw=raw, kind="completion") for text in prompts)
    )
    return _merged([cast(JSONResponse, r) for r in answers])


def _merged(answers: list[JSONResponse]) -> JSONResponse:
    """One completions body of several prompts' bodies: choices renumbered in prompt order,
    usage summed, each prompt's `whetstone` part (its record) under `whetstone.prompts`."""
    bodies = [json.loads(bytes(r.body)) for r in answers]
    body = bodies[0]
    body["choices"] = [
        {**c, "index": i}
        for i, c in enumerate(c for b in bodies for c in sorted(b["choices"], key=_index))
    ]
    body["usage"] = api.usage(
        sum(b["usage"]["prompt_tokens"] for b in bodies),
        sum(b["usage"]["completion_tokens"] for b in bodies),
    )
    body["whetstone"] = {"prompts": [b["whetstone"] for b in bodies]}
    headers = {k: v for k, v in answers[0].headers.items() if k.startswith("x-whetstone-")}
    refs = [r.headers["x-whetstone-record"] for r in answers if "x-whetstone-record" in r.headers]
    if refs:
        headers["x-whetstone-record"] = ",".join(refs)  # in prompt order
    return JSONResponse(body, headers=headers)


def _index(choice: dict[str, Any]) -> int:
    return int(choice["index"])


async def complete(
    svc: Services, request: Request, req: api.Sampling, inp: Input, *, raw: bool, kind: Kind
) -> Response:
    started = time.perf_counter()
    route = await run_in_threadpool(svc.router.resolve, req.model, req.task)
    request.state.model = route.model  # for the request counter's label
    stops = req.stops
    chosen = cascade.route_of(svc, request, req, route)
    ids = await run_in_threadpool(encode, svc, route, inp, raw)
    if not ids:
        raise APIError(400, "the prompt is empty", code="invalid_value", param="prompt")
    if req.choices > 1 and (chosen != "workhorse" or classify.by_labels(route)):
        raise APIError(
            400,
            "n: one answer per request on a classify task (answered by label likelihood) "
            "or a cascade or hero route",
            code="unsupported_parameter",
            param="n",
        )
    if api.response_schema(req.response_format) is not None and (
        chosen != "workhorse" or classify.by_labels(route)
    ):
        # The hero answers in its own way, and a classify task with labels by choosing one.
        raise APIError(
            400,
            "response_format: JSON answers are constrained on the workhorse route of a "
            "generate or extract task, not on a cascade or hero route or a classify task "
            "answered by its labels",
            code="unsupported_parameter",
            param="response_format",
        )
    if chosen != "workhorse":
        return await cascade.answer(svc, chosen, req, inp, route, ids, kind, started)
    if classify.by_labels(route):
        return await classify.answer(svc, req, inp, route, ids, kind, started)
    n = tokens_to_generate(svc, req, len(ids))
    grammar = await run_in_threadpool(answer_grammar, svc, req, route)
    answer = Answer(
        svc, req, inp, route, ids, kind, started, max_tokens=n, stops=stops, grammar=grammar
    )
    answer.submit()
    if req.stream:
        return Stream(answer).response()
    return await answer.whole()


@router.get("/v1/models")
async def models(svc: Svc) -> dict[str, Any]:
    return {"object": "list", "data": await run_in_threadpool(_listing, svc)}


@router.get("/v1/models/{model_id}")
async def model(model_id: str, svc: Svc) -> dict[str, Any]:
    """One model of the listing, or a 404 in OpenAI's shape."""
    for entry in await run_in_threadpool(_listing, svc):
        if entry["id"] == model_id:
            return entry
    raise APIError(
        404, f"the model {model_id!r} does not exist", code="model_not_found", param="model"
    )


def _listing(svc: Services) -> list[dict[str, Any]]:
    """`base`, each task (answered by its production version), and every registry version."""
    project = svc.project
    created = int(time.time())
    data: list[dict[str, Any]] = [
        {
            "id": BASE,
            "object": "model",
            "created": created,
            "owned_by": "whetstone",
            "base_model": svc.base.name,
        }
    ]
    production = registry.production_versions(project)  # one query, not one per task
    for task in project.store.list_tasks():
        if task.name == BASE:
            continue  # the model `base` is the base model, whatever the task
        version = production.get(task.name)
        data.append(
            {
                "id": task.name,
                "object": "model",
                "created": created,
                "owned_by": "whetstone",
                "production": None if version is None else f"{task.name}@{version}",
            }
        )
    for av in registry.list_versions(project):
        data.append(
            {
                "id": av.name,
                "object": "model",
                "created": int(av.created_at.timestamp()),
                "owned_by": "whetstone",
                "stage": av.stage,
                "method": av.method,
            }
        )
    return data
