"""How well a model already knows each reference, measured the way training measures it.

Curation's label-noise and hard-example steps rank records by this loss. Curation does not
import training: the composition layer (CLI, flywheel) hands `reference_losses` to
`whetstone.curate.curate` as its `scorer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from whetstone.models.decoding import Decoder
from whetstone.records import Input, Task
from whetstone.train.data import collate, encode_pair
from whetstone.train.loop import token_losses

if TYPE_CHECKING:
    from whetstone.models.types import CausalLM, Tokenizer


def reference_losses(
    model: CausalLM,
    tok: Tokenizer,
    task: Task,
    pairs: Sequence[tuple[Input, str]],
    batch_size: int = 16,
) -> list[float]:
    """Mean token cross-entropy of each (input, reference) pair's answer after its prompt,
    with the prompt and answer encoded (`encode_pair`) and batched (`collate`, one example per
    row) as training does, and the loss taken as training takes it (`token_losses`)."""
    import torch

    from whetstone.progress import progress

    stop_ids = Decoder.of(model, tok).stop_ids
    examples = [encode_pair(tok, task, inp, ref, stop_ids=stop_ids) for inp, ref in pairs]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    dev = str(next(model.parameters()).device)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    out = [0.0] * len(examples)
    with torch.inference_mode(), progress() as bar:
        tid = bar.add_task("score losses", total=len(order), info="")
        for at in range(0, len(order), batch_size):
            idx = order[at : at + batch_size]
            losses, row_of = token_losses(model, collate([[examples[i]] for i in idx], pad_id), dev)
            sums = torch.zeros(len(idx)).index_add_(0, row_of.cpu(), losses.cpu())
            counts = torch.bincount(row_of.cpu(), minlength=len(idx))
            for b, i in enumerate(idx):
                out[i] = float(sums[b] / counts[b])
            bar.advance(tid, len(idx))
    return out
