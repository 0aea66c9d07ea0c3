"""The label head artefact (classify tasks): a linear layer on the frozen model's mean-pooled
last hidden state, saved as `label_head.safetensors` with its labels in the meta file. Its
trainer is `whetstone.train.label_head`.

For inference the head is wrapped in `LabelHeadModel`, whose `answer_greedy` gives what
`models.generate` gets from greedy decoding (the label's tokens, then end-of-turn), so
prediction and evaluation use it without knowing it is not a language model. The server
refuses it (it batches token by token).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch  # this module is only imported when a label head is trained or loaded

from whetstone.errors import WhetstoneError
from whetstone.models.artefacts import write_meta
from whetstone.util import atomic_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from whetstone.models.types import Tokenizer

FILE = "label_head.safetensors"


def pooled_features(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean of the last hidden state over the real (non-padding) tokens."""
    body = getattr(model, model.base_model_prefix)
    with torch.no_grad():
        h = body(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    return ((h * m).sum(1) / m.sum(1).clamp(min=1)).float()


class LabelHead:
    """Standardise the features, then one linear layer to the labels."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        labels: list[str],
    ):
        self.weight, self.bias, self.mean, self.std, self.labels = weight, bias, mean, std, labels

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return ((feats - self.mean) / self.std) @ self.weight.T + self.bias


def save_label_head(head: LabelHead, tok: Tokenizer, folder: Path, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    try:
        with atomic_dir(folder, replace="owned") as tmp:  # the run's own best/
            save_file(
                {
                    "weight": head.weight.contiguous(),
                    "bias": head.bias.contiguous(),
                    "mean": head.mean.contiguous(),
                    "std": head.std.contiguous(),
                },
                str(tmp / FILE),
            )
            tok.save_pretrained(tmp)
            write_meta(tmp, labels_head=head.labels, **meta)
    except OSError as e:
        raise WhetstoneError(f"could not save the label head to {folder}: {e}") from None


def load_label_head(
    model: PreTrainedModel, tok: Tokenizer, folder: Path, labels: list[str]
) -> LabelHeadModel:
    """The label head saved in `folder`, over `model`; `labels` come from the folder's meta,
    which the caller has already read."""
    from safetensors.torch import load_file

    t = load_file(str(folder / FILE))
    return LabelHeadModel(
        model, tok, LabelHead(t["weight"], t["bias"], t["mean"], t["std"], labels)
    )


class LabelHeadModel(torch.nn.Module):
    """A frozen causal LM plus a label head, answering `generate()` with a label."""

    def __init__(self, model: PreTrainedModel, tok: Tokenizer, head: LabelHead):
        super().__init__()
        self.lm = model
        self.head = head
        eos = tok.eos_token_id
        self.label_ids = [
            [*tok.encode(label, add_special_tokens=False), eos] for label in head.labels
        ]

    def answer_greedy(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int
    ) -> list[tuple[list[int], list[float]]]:
        """What `models.generate` asks of a model that answers in its own way: per row, the
        label's tokens (end-of-turn included) and their log-probabilities (the whole label's
        log-probability spread over its tokens)."""
        feats = pooled_features(self.lm, input_ids, attention_mask)
        logp = torch.log_softmax(self.head.logits(feats.cpu()), -1)
        out = []
        for row, b in enumerate(logp.argmax(-1).tolist()):
            ids = self.label_ids[b][:max_new_tokens]
            out.append((list(ids), [float(logp[row, b]) / len(self.label_ids[b])] * len(ids)))
        return out
