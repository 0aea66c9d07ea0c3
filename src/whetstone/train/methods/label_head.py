"""The label head (classify tasks): a linear layer from the frozen model's pooled features to
the task's labels. Its trainer lives in `whetstone.train.label_head`, its artefact in
`whetstone.models.label_head`; this module registers the method and its options.

Adapters registered before the method had its own name carry method `head`; their artefact's
`labels_head` field (not the method name) is what marks a label head, so they load as before.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from whetstone.train.config import TrainConfig


class LabelHeadConfig(TrainConfig):
    """Full-batch steps on cached features: no batches, packing or checkpoints. The head
    learns at ten times `lr`."""

    method: Literal["label_head"] = "label_head"
    default_lr: ClassVar[float] = 1e-3
    task_kinds: ClassVar[frozenset[str] | None] = frozenset({"classify"})
    tuned_by_default: ClassVar[bool] = True


CONFIG = LabelHeadConfig
