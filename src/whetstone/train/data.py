"""Records → token ids with the loss on the answer only → packed batches.

Every example is the chat `whetstone.prompts.chat` builds (the same one inference uses) with
the reference as the assistant turn, rendered by the tokenizer's chat template. Only the
answer's tokens (up to and including the end-of-turn token decoding stops at) carry a loss.

Batches waste little on padding: with `packing`, the examples of a micro-batch are packed into
a few rows of near-equal length, each example keeping its own position ids (0, 1, 2, ...) and
a block-diagonal causal attention mask, so no example attends to another. The prompt tokens
all examples share (chat header + task instruction, often most of the prompt) are stored and
computed once per row, and every example attends to that one copy. Without packing, each example is one row and rows are grouped by length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from whetstone.errors import InvalidInput
from whetstone.models.generate import answer_token_ids, encode_prompts
from whetstone.prompts import answer_text, chat
from whetstone.records import Input, Record, Task

if TYPE_CHECKING:
    from collections.abc import Callable

    from whetstone.models.types import Tokenizer

IGNORE = -100


@dataclass
class Example:
    record_id: int | None
    ids: list[int]
    n_prompt: int  # the first n_prompt tokens are the prompt: no loss on them
    truncated: bool = False  # the prompt was cut from the left to fit max_length
    weight: float = 1.0  # its answer tokens' loss weight (a teacher's label may count less)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> list[int]:
        """The token each position is trained to be (IGNORE on the prompt)."""
        return [IGNORE] * self.n_prompt + self.ids[self.n_prompt :]


@dataclass
class DataReport:
    records: int = 0
    examples: int = 0
    too_long: int = 0  # examples longer than max_length
    truncated: int = 0  # ... of which the prompt was cut from the left
    dropped: int = 0  # ... of which were dropped (answer too long, or policy "drop")
    policy: str = ""
    max_tokens: int = 0
    answer_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.too_long:
            return f"{self.examples} examples, none longer than the limit"
        return (
            f"{self.too_long} of {self.records} examples exceeded max_length: {self.truncated} had their "
            f"prompt cut from the left, {self.dropped} dropped ({self.policy})"
        )


def encode_example(
    tok: Tokenizer, task: Task, record: Record, *, stop_ids: frozenset[int]
) -> Example:
    """Prompt and answer tokens of one record, the answer ending at the first of `stop_ids`
    (the model's decoder's, `Decoder.of(model, tok).stop_ids`: training teaches the token
    decoding stops at)."""
    if record.reference is None:
        raise InvalidInput(f"record {record.id} has no reference to train on")
    return encode_pair(
        tok, task, record.input, record.reference, stop_ids=stop_ids, record_id=record.id
    )


def encode_pair(
    tok: Tokenizer,
    task: Task,
    inp: Input,
    reference: str,
    *,
    stop_ids: frozenset[int],
    record_id: int | None = None,
) -> Example:
    """`encode_example` for an input and reference that need not be a stored record (curation
    scores its normalised, redacted rows exactly as training will see them)."""
    messages = chat(task, inp)
    prompt = encode_prompts(tok, [messages])[0]
    answer = answer_token_ids(tok, prompt, messages, answer_text(task, inp, reference), stop_ids)
    if answer is None:
        raise InvalidInput(
            "the tokenizer's chat template renders the prompt differently with an answer appended; "
            "this base model cannot be trained with answer-only loss"
        )
    return Example(record_id=record_id, ids=prompt + answer, n_prompt=len(prompt))


def encode_records(
    tok: Tokenizer,
    task: Task,
    records: list[Record],
    *,
    stop_ids: frozenset[int],
    max_length: int,
    policy: str,
    weight_of: Callable[[Record], float] | None = None,
) -> tuple[list[Example], DataReport]:
    """Encode records (answers ending at the first of `stop_ids`, see `encode_example`),
    applying the over-length policy: "left" cuts the prompt from the left (inference cuts long
    prompts the same way) and keeps the whole answer; "drop" drops the example. An answer that
    alone does not fit is always dropped: a cut answer teaches the model to stop early.
    `weight_of` gives each example its loss weight (default 1)."""
    report = DataReport(records=len(records), policy=f"truncation={policy}")
    out: list[Example] = []
    for r in records:
        ex = encode_example(tok, task, r, stop_ids=stop_ids)
        if weight_of is not None:
            ex.weight = weight_of(r)
        answer = len(ex) - ex.n_prompt
        report.answer_tokens = max(report.answer_tokens, answer)
        if len(ex) > max_length:
            report.too_long += 1
            # Keep at least a few prompt tokens (the assistant header) before the answer.
            if policy == "drop" or answer > max_length - 8:
                report.dropped += 1
                continue
            cut = len(ex) - max_length
            ex = replace(ex, ids=ex.ids[cut:], n_prompt=ex.n_prompt - cut, truncated=True)
            report.truncated += 1
        out.append(ex)
        report.max_tokens = max(report.max_tokens, len(ex))
    report.examples = len(out)
    return out, report


def shared_prefix(examples: list[Example]) -> list[int]:
    """The longest run of prompt tokens every example starts with (the chat template's header
    and the task instruction). It stops at least one token before each answer, since the last
    prompt token predicts the answer's first and that prediction belongs to one example."""
    whole = [ex for ex in examples if not ex.truncated]  # a cut prompt simply does not share
    if not whole:
        return []
    first = whole[0].ids
    n = min(ex.n_prompt for ex in whole) - 1
    for ex in whole[1:]:
        k = 0
        while k < n and ex.ids[k] == first[k]:
            k += 1
        n = k
    return first[: max(n, 0)]


@dataclass
class Batch:
    """Rows of packed examples. `targets[r, t]` is the token position t must predict."""

    input_ids: Any
    position_ids: Any
    segments: Any  # 0: the row's shared prefix; 1..n: its examples; n+1: padding
    sees_prefix: Any  # True on tokens of examples that continue the shared prefix
    targets: Any
    weights: Any  # each target's loss weight (its example's), 0 where there is no target
    tokens: int  # tokens a model without prefix sharing would process (no padding)
    target_tokens: int

    def answer_weights(self) -> Any:
        """The loss weight of each answer token, in the order `targets != IGNORE` lists them."""
        return self.weights[self.targets != IGNORE]

    def attention_mask(self, device: Any) -> Any:
        """(rows, 1, width, width) boolean, True where a query may attend to a key: causally,
        inside its own example, and to the shared prefix its example continues."""
        import torch

        seg = self.segments.to(device)
        sees = self.sees_prefix.to(device)
        width = seg.shape[1]
        causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
        same = seg[:, :, None] == seg[:, None, :]
        prefix = sees[:, :, None] & (seg == 0)[:, None, :]
        return ((same | prefix) & causal)[:, None]


def pack_rows(sizes: list[int], capacity: int, fixed: int = 0) -> list[list[int]]:
    """Split items (by index) into the fewest rows of at most `capacity` tokens, each row
    starting with `fixed` tokens, balanced so rows are nearly the same length (longest first
    into the emptiest row): little padding is left."""
    room = max(1, capacity - fixed)
    n_rows = max(1, -(-sum(sizes) // room))
    while True:
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        used = [0] * n_rows
        for i in sorted(range(len(sizes)), key=sizes.__getitem__, reverse=True):
            r = min(range(n_rows), key=used.__getitem__)
            if used[r] + sizes[i] > room and used[r] > 0:
                break
            rows[r].append(i)
            used[r] += sizes[i]
        else:
            return [r for r in rows if r]
        n_rows += 1


def collate(rows: list[list[Example]], pad_id: int, prefix: list[int] | None = None) -> Batch:
    """Lay rows out as tensors. With a shared `prefix`, each row holds it once and every
    example that starts with it stores only the rest, at the positions it would have had, and
    attends to the row's copy: the same numbers as running each example on its own, with the
    instruction's tokens computed once per row instead of once per example."""
    import torch

    p = prefix or []

    def shares(ex: Example) -> bool:
        return bool(p) and ex.ids[: len(p)] == p

    def width_of(row: list[Example]) -> int:
        has = any(shares(e) for e in row)
        return (len(p) if has else 0) + sum(len(e) - (len(p) if shares(e) else 0) for e in row)

    width = max(width_of(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    seg = torch.zeros((len(rows), width), dtype=torch.long)
    sees = torch.zeros((len(rows), width), dtype=torch.bool)
    tgt = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    wts = torch.zeros((len(rows), width), dtype=torch.float32)
    tokens = 0
    for r, row in enumerate(rows):
        at = 0
        if any(shares(e) for e in row):
            ids[r, : len(p)] = torch.tensor(p)
            pos[r, : len(p)] = torch.arange(len(p))
            at = len(p)
        for k, ex in enumerate(row, start=1):
            skip = len(p) if shares(ex) else 0
            n = len(ex) - skip
            ids[r, at : at + n] = torch.tensor(ex.ids[skip:])
            pos[r, at : at + n] = torch.arange(skip, len(ex))
            seg[r, at : at + n] = k
            sees[r, at : at + n] = skip > 0
            # Position t predicts token t+1; the last token of an example predicts nothing.
            tgt[r, at : at + n - 1] = torch.tensor(ex.labels[skip + 1 :])
            wts[r, at : at + n - 1] = ex.weight
            at += n
            tokens += len(ex)
        # Padding is a segment of its own that no real token attends to (and carries no loss).
        pos[r, at:] = torch.arange(width - at)
        seg[r, at:] = len(row) + 1
    return Batch(ids, pos, seg, sees, tgt, wts, tokens, int((tgt != IGNORE).sum()))


def plan_epoch(
    lengths: list[int], batch_size: int, *, seed: int, epoch: int, packing: bool
) -> list[list[int]]:
    """The micro-batches of one epoch as lists of example indices, fixed by (seed, epoch) so a
    resumed run sees exactly the order the interrupted one would have."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if packing:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    # Length grouping: sort within large chunks, cut into batches, shuffle the batches.
    chunk = batch_size * 16
    batches = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i : i + chunk], key=lengths.__getitem__)
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def make_batch(
    examples: list[Example],
    idx: list[int],
    *,
    packing: bool,
    capacity: int,
    pad_id: int,
    prefix: list[int] | None = None,
) -> Batch:
    chosen = [examples[i] for i in idx]
    if not packing:
        return collate([[e] for e in chosen], pad_id)
    p = prefix or []
    sizes = [len(e) - (len(p) if p and e.ids[: len(p)] == p else 0) for e in chosen]
    rows = pack_rows(sizes, capacity, fixed=len(p))
    return collate([[chosen[i] for i in row] for row in rows], pad_id, p)
