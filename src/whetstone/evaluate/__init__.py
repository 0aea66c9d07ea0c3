"""Evaluation: metrics by task kind, intervals, stored evaluations, comparisons.

The metric functions (`whetstone.evaluate.metrics`) are pure and cheap to import; running a
model (`evaluate`) and comparing two (`compare`) load the heavy machinery only when called.
"""

from __future__ import annotations

from whetstone.evaluate.metrics import main_score, per_example

__all__ = ["main_score", "per_example"]
