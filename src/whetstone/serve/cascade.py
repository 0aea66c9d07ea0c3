"""Cascade serving: the workhorse (the task's adapter) answers, and the hero (`models.hero`,
`hero:` in whetstone.yaml) answers instead when the workhorse is unsure or wrong.

A task's route is `hero.routes[task]` (workhorse by default), or for one request the body
field `whetstone_route` (`extra_body`) or the header `X-Whetstone-Route` (`extra_headers`):

- `workhorse`: the request goes the usual way (`answer`, `classify`), untouched by this module.
- `cascade`: the workhorse answers whole first. The hero is asked the same prompt when the
  answer fails the task's checks (a label outside the label set, extract output that is not
  JSON or breaks the schema: `prompts.answer_fails_checks`, the rule calibration counts
  with), reason `check`, or when its confidence
  (a log-probability: the mean over the tokens of a generated answer, the chosen label's
  under the distribution over labels for label scoring) is under the threshold calibrated for
  the adapter version (`info["cascade"]["threshold"]`, written by `whetstone route
  calibrate`), reason `confidence`. Without a threshold only failed checks escalate.
- `hero`: the hero answers every request; the workhorse is not run.

A hero that fails (timeout, HTTP error, unusable or empty answer) never fails a cascade
request: the workhorse's answer is returned, reason `hero-failed`. On the hero route there
is no other answer, so the request fails with a 502 naming the hero's failure (never its key).

The answer is decided before anything is sent, then returned whole or as SSE chunks in the
usual format. Headers say who answered: `X-Whetstone-Route`, `X-Whetstone-Answered-By`
(workhorse|hero), `X-Whetstone-Escalated` (true|false), `X-Whetstone-Hero-Cost` (money spent
on this request), `X-Whetstone-Cascade-Reason`; so does the body's `whetstone.cascade`. Each
request is captured as usual, with `meta["cascade"]` holding both answers (the hero's as a
teacher's answer, never as the reference) and tags `escalated` and `hero-disagreed`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from whetstone import prompts
from whetstone.errors import InvalidInput, first_line
from whetstone.models.hero import (
    ROUTES,
    Hero,
    HeroConfig,
    HeroError,
    HeroReply,
    project_hero_config,
)
from whetstone.project import Project
from whetstone.records import Input, Kind, Record, Task
from whetstone.registry import AdapterVersion
from whetstone.serve import classify
from whetstone.serve import openai_api as api
from whetstone.serve.answer import Answer, answer_grammar, tokens_to_generate
from whetstone.serve.answer import Kind as Endpoint
from whetstone.serve.engine import Delta, Done, Failed
from whetstone.serve.errors import APIError
from whetstone.serve.routes import Route
from whetstone.serve.state import Services
from whetstone.serve.streaming import Stream

log = logging.getLogger("whetstone.serve")

ROUTE_HEADER = "X-Whetstone-Route"
ROUTE_FIELD = "whetstone_route"
ESCALATED = "escalated"  # tags of the captured record
DISAGREED = "hero-disagreed"


def load_hero(project: Project) -> Hero | None:
    """The project's hero, or None when whetstone.yaml has no `hero:`. A key variable that is
    not set stops the server at start, naming the file and the variable."""
    where = str(project.config_path)
    config = project_hero_config(project)
    if config is None:
        return None
    try:
        return Hero(config)
    except InvalidInput as e:
        raise InvalidInput(f"{where}: {e}") from None


def threshold(adapter: AdapterVersion | None) -> float | None:
    """The confidence threshold calibrated for this adapter version, if any."""
    found = ((adapter.info if adapter else {}).get("cascade") or {}).get("threshold")
    if isinstance(found, (int, float)) and not isinstance(found, bool):
        return float(found)
    return None


class Announcer:
    """Says in the log, at start and when a task's production version changes, what each
    cascade task escalates on (`Router.on_change`)."""

    def __init__(self, config: HeroConfig):
        self.config = config
        self.said: dict[str, str] = {}

    def __call__(self, table: dict[str, AdapterVersion | None]) -> None:
        for task, route in sorted(self.config.routes.items()):
            if route != "cascade":
                continue
            line = self._line(task, table)
            if self.said.get(task) != line:
                self.said[task] = line
                log.info("%s", line)

    @staticmethod
    def _line(task: str, table: dict[str, AdapterVersion | None]) -> str:
        if task not in table:
            return f"cascade {task}: hero.routes names a task that does not exist"
        av = table[task]
        t = threshold(av)
        if t is None:
            on = f"{av.name} has no calibrated threshold" if av else "no production adapter"
            return (
                f"cascade {task}: {on} (whetstone route calibrate --task {task}); "
                "escalating on failed checks only"
            )
        assert av is not None
        return f"cascade {task}: escalating below confidence {t:g} ({av.name}) or on failed checks"


def route_of(svc: Services, request: Request, req: api.Sampling, route: Route) -> str:
    """The route of this request: asked for in the body or a header, else the task's."""
    asked, param = req.whetstone_route, ROUTE_FIELD
    if asked is None:
        asked, param = request.headers.get(ROUTE_HEADER), ROUTE_HEADER
    if asked is not None and asked not in ROUTES:
        raise APIError(
            400,
            f"{param} is {asked!r}; choose one of {', '.join(ROUTES)}",
            code="invalid_value",
            param=param,
        )
    if asked in ("hero", "cascade"):
        if svc.hero is None:
            raise APIError(
                400,
                f"{param} is {asked!r} but no hero is configured (hero: in whetstone.yaml)",
                code="invalid_value",
                param=param,
            )
        if route.task is None:
            raise APIError(
                400,
                f"{param} is {asked!r} but the request has no task (model base needs a task)",
                code="invalid_value",
                param=param,
            )
    if asked is not None:
        return asked
    if svc.hero is None or route.task is None:
        return "workhorse"
    return svc.hero.config.route(route.task.name)


def escalation(task: Task, done: Done, limit: float | None) -> str | None:
    """Why the workhorse's answer goes to the hero (check, confidence), or None."""
    if prompts.answer_fails_checks(task, done.text) is not None:
        return "check"
    if limit is not None and done.confidence < limit:
        return "confidence"
    return None


def hero_answer(task: Task, text: str) -> str:
    """The hero's text as an answer of the task: a label where it names one, compact JSON
    for extract (as the workhorse's answers are stored)."""
    if task.kind == Kind.classify and task.labels:
        text = prompts.map_label(text, task.labels) or text
    return prompts.normalise_answer(task, text)


@dataclass
class Outcome:
    """Who answered one request, why, and what each side said."""

    task: Task
    route: str
    threshold: float | None
    workhorse: Done | None  # None on the hero route
    reason: str | None = None  # confidence | check | route | hero-failed
    escalated_for: str | None = None  # confidence | check, kept when the hero then fails
    hero: HeroReply | None = None
    hero_output: str | None = None
    hero_error: str | None = None

    @property
    def answered_by(self) -> str:
        return "hero" if self.hero_output is not None else "workhorse"

    @property
    def escalated(self) -> bool:
        return self.escalated_for is not None

    @property
    def disagreed(self) -> bool:
        """Both answered, differently once normalised: a hard example for curation."""
        wh, hero = self.workhorse, self.hero_output
        return (
            wh is not None
            and hero is not None
            and (prompts.normalise_answer(self.task, wh.text) != hero)
        )

    @property
    def cost(self) -> float:
        return self.hero.cost if self.hero else 0.0

    def final(self) -> Done:
        """The end event the caller gets: the hero's answer, or the workhorse's."""
        if self.hero_output is not None and self.hero is not None:
            wh = self.workhorse
            return Done(
                text=self.hero_output,
                finish_reason="stop",
                prompt_tokens=self.hero.prompt_tokens,
                completion_tokens=self.hero.completion_tokens,
                confidence=wh.confidence if wh else 0.0,
            )
        assert self.workhorse is not None, "the hero route fails without a hero answer"
        return self.workhorse

    def meta(self) -> dict[str, Any]:
        wh = self.workhorse
        hero: dict[str, Any] | None = None
        if self.hero_error is not None:
            hero = {"error": self.hero_error}
        if self.hero is not None:
            hero = {
                **(hero or {"output": self.hero_output}),
                "model": self.hero.model,
                "cost": self.hero.cost,
                "prompt_tokens": self.hero.prompt_tokens,
                "completion_tokens": self.hero.completion_tokens,
            }
        return {
            "route": self.route,
            "answered_by": self.answered_by,
            "reason": self.reason,
            "escalated_for": self.escalated_for,
            "threshold": self.threshold,
            "workhorse": None
            if wh is None
            else {
                "output": prompts.normalise_answer(self.task, wh.text),
                "confidence": wh.confidence,
                "check": prompts.answer_fails_checks(self.task, wh.text),  # why it failed
            },
            "hero": hero,
        }

    def amend(self, rec: Record) -> Record:
        """The captured record, marked: both answers in meta, tags, and who answered."""
        meta = {**rec.meta, "cascade": self.meta()}
        tags = list(rec.tags)
        if self.escalated:
            tags.append(ESCALATED)
        if self.disagreed:
            tags.append(DISAGREED)
        wh = self.workhorse
        update: dict[str, Any] = {"meta": meta, "tags": tags}
        if self.answered_by == "hero" and self.hero is not None:
            update["model"] = f"hero:{self.hero.model}"
        if wh is None:
            update["confidence"] = None  # no workhorse ran: no confidence to keep
        return rec.model_copy(update=update)

    def headers(self) -> dict[str, str]:
        h = {
            ROUTE_HEADER: self.route,
            "X-Whetstone-Answered-By": self.answered_by,
            "X-Whetstone-Escalated": "true" if self.escalated else "false",
            "X-Whetstone-Hero-Cost": f"{self.cost:.10g}",
        }
        if self.reason is not None:
            h["X-Whetstone-Cascade-Reason"] = self.reason
        return h

    def summary(self) -> dict[str, Any]:
        """The body's `whetstone.cascade` part."""
        return {
            "route": self.route,
            "answered_by": self.answered_by,
            "escalated": self.escalated,
            "reason": self.reason,
            "threshold": self.threshold,
            "hero_model": self.hero.model if self.hero else None,
            "hero_cost": self.cost,
            "hero_error": self.hero_error,
        }


async def answer(
    svc: Services,
    chosen: str,
    req: api.Sampling,
    inp: Input,
    route: Route,
    ids: list[int],
    kind: Endpoint,
    started: float,
) -> Response:
    """Answer one request on the cascade or hero route, whole or streamed."""
    task = route.task
    assert task is not None and svc.hero is not None, "route_of allows no other"
    a, done = await _workhorse(svc, chosen, req, inp, route, ids, kind, started)
    outcome = Outcome(task=task, route=chosen, threshold=threshold(route.adapter), workhorse=done)
    if done is None:
        outcome.reason = "route"
    else:
        outcome.reason = outcome.escalated_for = escalation(task, done, outcome.threshold)
        if outcome.escalated_for is not None:
            svc.metrics.cascade_escalations.labels(task.name, outcome.escalated_for).inc()
    if outcome.reason is not None:
        try:
            await _ask_hero(svc, task, inp, outcome)
        except asyncio.CancelledError:
            # The caller went away while the hero answered: keep the workhorse's answer.
            outcome.hero_error = "the request was cancelled while the hero answered"
            if done is not None:
                _mark(a, outcome).finish(outcome.final())
            raise
    if outcome.hero_output is None and done is None:
        raise APIError(502, outcome.hero_error or "the hero did not answer", code="hero_failed")
    svc.metrics.cascade_answers.labels(task.name, chosen, outcome.answered_by).inc()
    final = outcome.final()
    _mark(a, outcome)
    a.events.put_nowait(Delta(final.text, final.logprobs))  # the workhorse's tokens'
    a.events.put_nowait(final)
    return Stream(a).response() if req.stream else await a.whole()


def _mark(a: Answer, outcome: Outcome) -> Answer:
    """Hand the outcome to the answer: its record, headers and body say who answered."""
    a.engine_done = outcome.workhorse or Done("", "stop", 0, 0, 0.0)
    a.amend = outcome.amend
    a.whetstone = {"cascade": outcome.summary()}
    if outcome.workhorse is None:
        a.whetstone["confidence"] = None
    a.headers.update(outcome.headers())
    if outcome.answered_by == "hero":
        a.logprobs = None  # the workhorse's label distribution is not the hero's answer's
    return a


async def _workhorse(
    svc: Services,
    chosen: str,
    req: api.Sampling,
    inp: Input,
    route: Route,
    ids: list[int],
    kind: Endpoint,
    started: float,
) -> tuple[Answer, Done | None]:
    """The workhorse's whole answer (None on the hero route, which does not run it)."""
    if chosen == "hero":
        return Answer(svc, req, inp, route, ids, kind, started, max_tokens=1, stops=[]), None
    if classify.by_labels(route):
        a = await classify.scored(svc, req, inp, route, ids, kind, started)
    else:
        n = tokens_to_generate(svc, req, len(ids))
        # An extract task's own schema, as on the workhorse route (`constrain_extract`).
        grammar = await run_in_threadpool(answer_grammar, svc, req, route)
        a = Answer(
            svc, req, inp, route, ids, kind, started, max_tokens=n, stops=req.stops, grammar=grammar
        )
        a.submit()
    try:
        while True:
            ev = await a.events.get()
            if isinstance(ev, Failed):
                raise ev.error
            if isinstance(ev, Done):
                return a, ev
    except asyncio.CancelledError:
        a.job.cancelled = True
        raise


async def _ask_hero(svc: Services, task: Task, inp: Input, outcome: Outcome) -> None:
    """Ask the hero; its answer or its failure goes into `outcome`, and its tokens, money
    and failures into the metrics (once per answer). Never raises for the hero's faults."""
    hero, metrics = svc.hero, svc.metrics
    assert hero is not None
    try:
        reply = await hero.aanswer(prompts.chat(task, inp))
    except HeroError as e:
        error = str(e)
    except Exception as e:  # anything else the client raised: still the hero's fault
        error = hero.mask(f"the hero failed: {type(e).__name__}: {first_line(e)}")
    else:
        _count(svc, task, reply)  # an empty answer was paid for all the same
        outcome.hero = reply
        text = hero_answer(task, reply.text)
        unusable = _unusable(task, reply, text, outcome.workhorse)
        if unusable is None:
            outcome.hero_output = text
            return
        error = unusable
    metrics.hero_failures.labels(task.name).inc()
    outcome.hero_error = error
    if outcome.workhorse is not None:
        outcome.reason = "hero-failed"
    log.warning("cascade %s: %s; %s", task.name, error, _fallback(outcome))


def _unusable(task: Task, reply: HeroReply, text: str, workhorse: Done | None) -> str | None:
    """Why the hero's answer is not returned: empty, or failing the task's checks (a label
    outside the set, broken JSON) where the workhorse's answer passes them. None: use it."""
    if not reply.text.strip():
        return f"the hero ({reply.model}) sent an empty answer"
    why = prompts.answer_fails_checks(task, text)
    if why is None or workhorse is None or prompts.answer_fails_checks(task, workhorse.text):
        return None
    return f"the hero's answer fails the task's checks ({why})"


def _fallback(outcome: Outcome) -> str:
    return "the workhorse's answer is returned" if outcome.workhorse else "the request fails"


def _count(svc: Services, task: Task, reply: HeroReply) -> None:
    m = svc.metrics
    m.hero_calls.labels(task.name).inc(reply.calls)
    m.hero_prompt_tokens.labels(task.name).inc(reply.prompt_tokens)
    m.hero_completion_tokens.labels(task.name).inc(reply.completion_tokens)
    m.hero_cost.labels(task.name).inc(reply.cost)
