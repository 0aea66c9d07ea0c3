"""The curation config: `curate.yaml`, or the `curate:` section of whetstone.yaml.

Keys are the pipeline's arguments; unknown keys, unknown step names and out-of-range
thresholds are errors that name the key, so a typo never silently turns a step off.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from whetstone import neardup
from whetstone.errors import InvalidInput, from_validation
from whetstone.util import read_yaml_mapping

# The order steps run in, whatever order the config lists them. `split` runs before `select`
# because the budget counts training records, and which records are training is the split's call.
STEPS = ("validate", "filters", "pii", "dedup", "noise", "hard", "split", "select")
PII_TYPES = ("email", "phone", "card", "iban", "ip")


class CurateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[str] = Field(default_factory=lambda: list(STEPS))
    # filters
    min_tokens: int = Field(default=1, ge=0)
    max_tokens: int | None = Field(default=2048, ge=1)
    deny: list[str] = Field(default_factory=list)
    # pii
    pii_types: list[str] = Field(default_factory=lambda: list(PII_TYPES))
    # dedup: near duplicates are `whetstone.neardup`'s, at this Jaccard
    jaccard: float = Field(default=neardup.THRESHOLD, ge=0, le=1)
    cosine: float = Field(default=0.97, ge=0, le=1)
    # noise
    drop_noisy: bool = False
    noise_folds: int = Field(default=5, ge=2, le=20)
    # A reference loss above median + loss_mad_k x 1.4826 x MAD (the median absolute deviation,
    # scaled to read like a standard deviation) is a suspect. Median and MAD, unlike mean and
    # standard deviation, are not dragged up by the very outliers the rule looks for.
    loss_mad_k: float = Field(default=3.0, gt=0)
    # Extract tasks: flag references with a string value not copied from the input (case and
    # spacing ignored), the sign of references swapped between records. false skips the check.
    grounded_values: bool = True
    # Extract tasks: flag a value whose key gets an out-of-sample probability under this from
    # a classifier over every other record's values while another key gets over 0.5 (a value
    # filed under the wrong key). 0 skips the check.
    misfiled_p: float = Field(default=0.01, ge=0, lt=1)
    # hard examples
    hard_tags: list[str] = Field(default_factory=lambda: ["hard"])
    low_confidence: float = Field(default=0.5, ge=0, le=1)  # exp(mean log-prob) below this
    hard_loss_quantile: float = Field(default=0.9, ge=0, le=1)
    hard_weight: float = Field(default=2.0, gt=0)
    # selection
    budget: int | None = Field(default=None, ge=1)
    # split
    validation: float = Field(default=0.1, ge=0, lt=1)
    test: float = Field(default=0.2, ge=0, lt=1)
    # Near-duplicate groups stay in one split, and a training row this close to a test row is
    # removed. Keep it at or below the gate's `near_duplicate`, so the gate's leakage rule
    # (the same definition) never finds a pair this step let through.
    group_jaccard: float = Field(default=0.5, ge=0, le=1)
    reshuffle_test: bool = False
    embedding_model: str | None = None
    card: bool = True

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in STEPS]
        if unknown:
            raise ValueError(f"unknown step(s) {unknown}; known steps: {', '.join(STEPS)}")
        return v

    @field_validator("pii_types")
    @classmethod
    def _pii(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in PII_TYPES]
        if unknown:
            raise ValueError(f"unknown PII type(s) {unknown}; known: {', '.join(PII_TYPES)}")
        return v

    @field_validator("deny")
    @classmethod
    def _deny(cls, v: list[str]) -> list[str]:
        for i, pattern in enumerate(v):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"item {i} {pattern!r} is not a valid regex: {e}") from None
        return v

    @model_validator(mode="after")
    def _fractions(self) -> CurateConfig:
        if self.validation + self.test >= 1:
            raise ValueError("validation + test must leave room for training (sum below 1)")
        return self

    def runs(self, step: str) -> bool:
        return step == "split" or step in self.steps


def parse(data: dict[str, Any], where: str) -> CurateConfig:
    try:
        return CurateConfig.model_validate(data)
    except ValidationError as e:
        raise from_validation(e, where) from None


def load(project: Any, path: str | Path | None = None, **overrides: Any) -> CurateConfig:
    """The config from `path`, else the project's `curate:` section, then `overrides`
    (CLI options) on top; None-valued overrides are ignored."""

    if path is not None:
        p = Path(path)
        data = read_yaml_mapping(p, "curation settings")
        if set(data) == {"curate"}:
            data = data["curate"] or {}
        if not isinstance(data, dict):
            raise InvalidInput(f"{p}: expected a mapping of curation settings")
        where = str(p)
    else:
        data = project.section("curate")
        where = f"{project.config_path}: curate"
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return parse(data, where)
