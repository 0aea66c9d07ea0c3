"""Training: records of a snapshot → a registered adapter version.

from whetstone.train import TrainConfig, train_task
result = train_task(project, "addresses", TrainConfig(method="lora", epochs=2))
result.adapter  # "addresses@3"
"""

from __future__ import annotations

from whetstone.train.api import TrainResult, resume_run, train_task
from whetstone.train.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "resume_run", "train_task"]
