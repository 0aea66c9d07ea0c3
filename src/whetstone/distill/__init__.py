"""The hero as teacher: it labels records (`label`, `whetstone distill`) and writes new inputs
(`synthesize`, `whetstone synthesize`). Teacher labels train the workhorse; only human or
imported references evaluate and gate it (`records.human_reference`)."""

from whetstone.distill.label import (
    DISAGREED,
    DISTILLED,
    LabelSummary,
    label,
    label_records,
    unlabelled,
)
from whetstone.distill.synthesize import SynthSummary, parse_inputs, synthesize
from whetstone.distill.vote import DEFAULT_MIN_AGREEMENT, Vote, majority

__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "DISAGREED",
    "DISTILLED",
    "LabelSummary",
    "SynthSummary",
    "Vote",
    "label",
    "label_records",
    "majority",
    "parse_inputs",
    "synthesize",
    "unlabelled",
]
