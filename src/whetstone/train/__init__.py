"""Training: records of a snapshot → a registered adapter version.

from whetstone.train import train_config, train_task
result = train_task(project, "addresses", train_config(method="lora", epochs=2))
result.adapter  # "addresses@3"

Each method has its own config class (`whetstone.train.methods.<method>`); `train_config`
picks it by `method` and refuses the options of other methods.
"""

from __future__ import annotations

from whetstone.train.api import TrainResult, resume_run, train_task
from whetstone.train.config import TrainConfig, train_config

__all__ = ["TrainConfig", "TrainResult", "resume_run", "train_config", "train_task"]
