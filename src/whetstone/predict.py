"""Run a model over text or stored records; write what it said back as record outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from whetstone.errors import InvalidInput
from whetstone.models.generate import GENERATE_BATCH, Generation, generate
from whetstone.project import Project
from whetstone.prompts import chat, normalise_answer
from whetstone.records import Input, Kind, Record, Task

if TYPE_CHECKING:
    from whetstone.models.gguf import LlamaCpp
    from whetstone.models.types import CausalLM, InferenceModel, Tokenizer


@dataclass
class Predictor:
    """A loaded model ready to answer a task: the base model, or base + adapter `T@N`."""

    task: Task
    model: InferenceModel
    tokenizer: Tokenizer
    name: str  # what goes into Record.model: "base:<model>" or "T@N"
    taught: bool = True  # an adapter trained on the task's answers; False: the base model

    def __call__(
        self,
        inputs: list[Input],
        *,
        batch_size: int = GENERATE_BATCH,
        max_new_tokens: int = 256,
        on_batch: Callable[[int], None] | None = None,
        labels: list[str] | None = None,
        constrained: bool = False,
    ) -> list[Generation]:
        """The model's answer to each input. A classify task with labels (`labels`, else the
        task's) is answered by label likelihood (`models.label_scoring`), not generation,
        unless the model is a label head, which answers with its own labels. `constrained`:
        an extract task's answers are JSON that keeps its schema (`models.constrain`), as
        served by default."""
        chats = [chat(self.task, i) for i in inputs]
        choices = labels if labels is not None else self.task.labels
        if self.answers_by_likelihood(choices):
            assert choices
            return self._score_labels(chats, choices, batch_size, on_batch)
        gens = generate(
            self.model,
            self.tokenizer,
            chats,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            on_batch=on_batch,
            schema=answer_schema(self.task, taught=self.taught) if constrained else None,
        )
        for g in gens:
            g.text = normalise_answer(self.task, g.text)
        return gens

    def answers_by_likelihood(self, labels: list[str] | None) -> bool:
        """Whether a call with these labels scores them rather than generating."""
        label_head = getattr(self.model, "answer_greedy", None) is not None
        return self.task.kind == Kind.classify and bool(labels) and not label_head

    def _score_labels(
        self,
        chats: list[list[dict[str, str]]],
        labels: list[str],
        batch_size: int,
        on_batch: Callable[[int], None] | None,
    ) -> list[Generation]:
        from whetstone.models.label_scoring import score_labels

        # answers_by_likelihood ruled out a label head: this is a causal LM.
        lm = cast("CausalLM", self.model)
        scored = score_labels(
            lm, self.tokenizer, chats, labels, batch_size=batch_size, on_batch=on_batch
        )
        return [
            Generation(
                text=s.label,
                confidence=s.confidence,
                output_tokens=s.tokens,
                latency_ms=s.latency_ms,
                label_probs=s.probs,
            )
            for s in scored
        ]


@dataclass
class GgufPredictor:
    """A GGUF file answering a task in llama.cpp (`models.gguf.LlamaCpp`): the prompt built
    as for every model (`prompts.chat`), greedy decoding, the same answer normalisation."""

    task: Task
    runtime: LlamaCpp
    name: str  # "gguf:<file name>:<sha256 prefix>": the file's content names its evaluations
    snapshot_id: str | None = None  # the snapshot of the adapter it was exported from

    @property
    def tokenizer(self) -> Any:
        return self.runtime.tokenizer

    def __call__(
        self,
        inputs: list[Input],
        *,
        batch_size: int = GENERATE_BATCH,
        max_new_tokens: int = 256,
        on_batch: Callable[[int], None] | None = None,
        labels: list[str] | None = None,
        constrained: bool = False,
    ) -> list[Generation]:
        if constrained and answer_schema(self.task, taught=True) is not None:
            raise InvalidInput(
                "constrained decoding runs in transformers; a GGUF model answers unconstrained"
            )
        if self.task.kind == Kind.classify:
            raise InvalidInput(
                f"task {self.task.name!r} is a classify task, answered by label likelihood; "
                "a GGUF model only generates, so classify tasks are out of scope for it: "
                "evaluate the adapter it came from (T@N)"
            )
        gens = self.runtime.answer(
            [chat(self.task, i) for i in inputs], max_new_tokens=max_new_tokens, on_batch=on_batch
        )
        for g in gens:
            g.text = normalise_answer(self.task, g.text)
        return gens


def answer_schema(task: Task, *, taught: bool) -> dict[str, Any] | None:
    """The JSON schema that constrains a task's answers when asked (`constrained`, and the
    server's `constrain_extract`): an extract task's own, any JSON object without one; None for
    other tasks. A model `taught` the task (an adapter) writes its keys in the order it
    learnt, the order values appear in the input, so its keys may come in any order
    (`models.constrain.ANY_KEY_ORDER`); the base model, never taught an order, is led through
    the schema's (measured on the address task: the base model's answers cut short by the
    budget fell from 91 to 26 of 100 with the schema's order, the adapter's field F1 was the
    same either way; benchmarks/constrained.py)."""
    from whetstone.models.constrain import JSON_OBJECT, any_key_order

    if task.kind != Kind.extract:
        return None
    if not task.schema_:
        return JSON_OBJECT
    return any_key_order(task.schema_) if taught else task.schema_


def is_gguf(model: str) -> bool:
    return model.lower().endswith(".gguf")


def load_gguf_predictor(
    project: Project, task: str, path: Path, *, lora: Path | None = None
) -> GgufPredictor:
    """The GGUF file at `path` (with a GGUF LoRA over it) answering `task`. The snapshot of
    the adapter it was exported from is read from the export report beside it, if any."""
    import json

    from whetstone.models.gguf import LlamaCpp
    from whetstone.util import sha256_file

    t = project.task(task)
    runtime = LlamaCpp(path, lora=lora)
    digest = sha256_file(path)[:12]
    if lora is not None:
        digest += "+" + sha256_file(lora)[:12]
    snapshot = None
    report = path.parent / "export-report.json"
    if report.is_file():
        try:
            snapshot = json.loads(report.read_text()).get("snapshot")
        except ValueError:
            snapshot = None
    return GgufPredictor(t, runtime, f"gguf:{path.name}:{digest}", snapshot)


def load_predictor(
    project: Project, task: str, model: str = "base", base_model: str | None = None
) -> Predictor | GgufPredictor:
    """`model` is "base", a task name (its production adapter), an exact version "T@N", or
    a path to a GGUF file (answered by llama.cpp)."""
    from whetstone.models import base as base_models

    if is_gguf(model):
        return load_gguf_predictor(project, task, Path(model).expanduser())
    t = project.task(task)
    if model == "base":
        base = base_models.resolve(base_model or project.base_model)
        lm, tok = base_models.load(base)
        return Predictor(task=t, model=lm, tokenizer=tok, name=f"base:{base.name}", taught=False)
    from whetstone.registry import load_adapter_model

    m, tok, name = load_adapter_model(project, model, task=task, base_model=base_model)
    return Predictor(task=t, model=m, tokenizer=tok, name=name)


def predict_records(
    project: Project,
    predictor: Predictor | GgufPredictor,
    records: list[Record],
    *,
    batch_size: int = GENERATE_BATCH,
    max_new_tokens: int = 256,
    constrained: bool = False,
) -> list[tuple[Record, Generation]]:
    """Answer records that have no output yet and store output, model and confidence."""
    from whetstone.progress import progress

    todo = [r for r in records if r.output is None]
    if len(todo) < len(records):
        # A record's first output is its history; re-answering it is what `eval` is for.
        skipped = len(records) - len(todo)
        from whetstone.progress import console

        console.print(f"[dim]{skipped} record(s) already have an output; left as they are[/dim]")
    results: list[tuple[Record, Generation]] = []
    with progress() as p:
        tid = p.add_task("predict", total=len(todo), info="")
        # Store as each chunk finishes, so an interrupted run keeps what it already did.
        chunk = max(batch_size * 4, 1)
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            gens = predictor(
                [r.input for r in part],
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                on_batch=lambda n: p.advance(tid, n),
                constrained=constrained,
            )
            for rec, g in zip(part, gens, strict=True):
                assert rec.id is not None
                project.store.set_output(
                    rec.id,
                    g.text,
                    model=predictor.name,
                    confidence=g.confidence,
                    meta={"latency_ms": round(g.latency_ms, 2), "output_tokens": g.output_tokens},
                )
                results.append((rec, g))
    return results


def check_text(text: str | None) -> str:
    if text is None or not text.strip():
        raise InvalidInput("give a TEXT to answer, or --records STATUS to answer stored records")
    return text
