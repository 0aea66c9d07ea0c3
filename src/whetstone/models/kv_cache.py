"""The key/value cache's name in model calls and outputs, across transformers versions.

transformers 5.24 renamed the `past_key_values` argument and output field to `cache`; the old
name still works there but warns on every call and goes in 5.40. Whetstone supports both
sides of the rename (pyproject asks for transformers>=4.56), so the name is looked up once
from the installed version's output class rather than hard-coded.
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def _name() -> str:
    from dataclasses import fields

    from transformers.modeling_outputs import CausalLMOutputWithPast

    names = {f.name for f in fields(CausalLMOutputWithPast)}
    return "cache" if "cache" in names else "past_key_values"


def cache_arg(kv: Any) -> dict[str, Any]:
    """`kv` as the keyword argument the installed transformers' models take."""
    return {_name(): kv}


def cache_out(out: Any) -> Any:
    """The key/value cache a model call returned."""
    return getattr(out, _name())
