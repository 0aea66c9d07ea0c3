"""The one stop rule: when a generated answer ends, and what its text is.

Evaluation and batch prediction (`models.generate`) and the serving engine
(`serve.engine`) batch and sample differently, but both end an answer and turn its token ids
into text here, so evaluation scores exactly the text serving would return for the same
tokens.

An answer ends at the first *stop id*: the tokenizer's EOS or any EOS id of the model's
generation config (chat models often end a turn with a token, such as `<|im_end|>`, that is
not the tokenizer's EOS), or where a caller's *stop string* first appears in its text. Its
text is the tokens before the stop id, decoded without special tokens and cut before the
stop string. Whitespace is left as decoded: an answer is compared and stored after
`prompts.normalise_answer`, which strips it.

Training teaches the same end (`end_answer`): an answer's tokens run through its first stop
id, so the model learns to write the token decoding stops at, and nothing after it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from whetstone.errors import InvalidInput
from whetstone.prompts import answer_text
from whetstone.records import Input, Task

if TYPE_CHECKING:
    from whetstone.models.types import InferenceModel, Tokenizer


@dataclass(frozen=True)
class Answer:
    text: str
    stopped: bool  # a stop id or a stop string ended it (else it may go on, or ran out of room)


@dataclass(frozen=True)
class Decoder:
    """Turns a model's generated token ids into its answer."""

    tok: Tokenizer
    stop_ids: frozenset[int]

    @classmethod
    def of(cls, model: InferenceModel, tok: Tokenizer) -> Decoder:
        """The decoder of `model` with tokenizer `tok`: stop ids from both."""
        config = getattr(model, "generation_config", None)  # a label-head model has none
        eos = getattr(config, "eos_token_id", None)
        ids = {tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        return cls(tok, frozenset(int(i) for i in ids))

    def answer(self, tokens: Sequence[int], stop: Sequence[str] = ()) -> Answer:
        """The answer that `tokens` (generated so far) make, and whether it has ended."""
        ids = list(tokens)
        end = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
        # transformers types decode() as `str | list[str]` for every input; one sequence of
        # ids decodes to one str.
        text = cast(
            str, self.tok.decode(ids if end is None else ids[:end], skip_special_tokens=True)
        )
        cut = min((at for s in stop if s and (at := text.find(s)) >= 0), default=None)
        if cut is not None:
            text = text[:cut]
        return Answer(text, end is not None or cut is not None)

    def ended(self, tokens: Sequence[int], stop: Sequence[str] = ()) -> bool:
        """Whether `tokens` make a finished answer. Without stop strings only the newest token
        needs checking (decoding stops at the first stop id), which saves a decode per step."""
        if tokens and tokens[-1] in self.stop_ids:
            return True
        return bool(stop) and self.answer(tokens, stop).stopped


def end_answer(tok: Tokenizer, ids: Sequence[int], stop_ids: frozenset[int]) -> list[int]:
    """Answer tokens `ids` ended as a model is taught to end them: cut after the first stop id
    (what a chat template writes after its end-of-turn token, such as a newline, is never
    generated), or, when none is there, with the tokenizer's EOS appended (the smallest stop
    id if EOS is not one). Raise InvalidInput when there is no stop id to end with."""
    ids = list(ids)
    end = next((i for i, t in enumerate(ids) if t in stop_ids), None)
    if end is not None:
        return ids[: end + 1]
    if not stop_ids:
        raise InvalidInput("the tokenizer and model have no end-of-turn token to end an answer")
    eos = tok.eos_token_id
    return [*ids, int(eos) if eos in stop_ids else min(stop_ids)]


# The decode budget a task's answers get when nobody sets one: long enough for the longest
# usual answer with room to spare, short enough that a rambling model (an untrained base model
# on an extract task) stops early instead of writing 256 tokens per record.
BUDGET_QUANTILE = 0.99
BUDGET_FACTOR = 1.5
BUDGET_FLOOR = 16
BUDGET_CAP = 1024


def answer_budget(tok: Tokenizer, task: Task, examples: Sequence[tuple[Input, str]]) -> int:
    """`max_new_tokens` from a task's references: the p99 of their answers' token lengths
    (the answer text a model is taught, plus its end token) times 1.5, at least 16 and at most
    1024. `examples` are (input, reference) pairs; none gives the floor."""
    if not examples:
        return BUDGET_FLOOR
    answers = [answer_text(task, inp, ref) for inp, ref in examples]
    lengths = sorted(len(ids) + 1 for ids in tok(answers, add_special_tokens=False)["input_ids"])
    at = min(len(lengths) - 1, math.ceil(BUDGET_QUANTILE * len(lengths)) - 1)
    return max(BUDGET_FLOOR, min(BUDGET_CAP, math.ceil(lengths[at] * BUDGET_FACTOR)))
