"""Token log-probabilities of a generated answer, each with the text its token adds.

A token's text is what it adds to the answer decoded so far (the same decoding as
`models.decoding`, special tokens skipped), found by decoding a short window of the tokens
before it with and without it: a byte-level token that only starts a character adds "" and
the one that completes it adds the whole character. So the tokens' texts joined are the
answer's text, and each token's offset into it is exact (`text_offset`, the order of
streamed chunks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from whetstone.models.types import Tokenizer

WINDOW = 6  # tokens of left context: enough for a multi-byte character and a leading space
PARTIAL = "\ufffd"  # what decoding shows for bytes that do not yet make a character


@dataclass
class TokenLogprob:
    token: str  # the text the token adds to the answer
    logprob: float  # under the model's own distribution (before temperature and top_p)
    offset: int  # where that text starts in the answer
    top: list[tuple[str, float]] = field(default_factory=list)  # the most likely, best first


def _decode(tok: Tokenizer, ids: Sequence[int]) -> str:
    return cast(str, tok.decode(list(ids), skip_special_tokens=True))


def pieces(tok: Tokenizer, before: Sequence[int], candidates: Sequence[int]) -> list[str]:
    """The text each of `candidates` would add after the tokens `before`."""
    window = list(before[-WINDOW:])
    # Bytes still waiting for the rest of their character are not text yet.
    known = _decode(tok, window).rstrip(PARTIAL)
    out = []
    for cand in candidates:
        text = _decode(tok, [*window, cand])
        out.append("" if text.endswith(PARTIAL) else text[len(known) :])
    return out
