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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

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
