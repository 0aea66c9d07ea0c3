"""The key/value cache's name in model calls and outputs, across transformers versions.

transformers 5.24 renamed the `past_key_values` argument and output field to `cache`; the old
name still works there but warns on every call and goes in 5.40. Whetstone supports both
sides of the rename (pyproject asks for transformers>=4.56), so the name is looked up once
from the installed version's output class rather than hard-coded.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers.cache_utils import DynamicCache
    from transformers.utils import ModelOutput


@cache
def _name() -> str:
    from dataclasses import fields

    from transformers.modeling_outputs import CausalLMOutputWithPast

    names = {f.name for f in fields(CausalLMOutputWithPast)}
    return "cache" if "cache" in names else "past_key_values"


def cache_arg(kv: DynamicCache | None) -> dict[str, DynamicCache | None]:
    """`kv` as the keyword argument the installed transformers' models take."""
    return {_name(): kv}


def cache_out(out: ModelOutput) -> DynamicCache:
    """The key/value cache a model call returned (with `use_cache=True`, a DynamicCache)."""
    cache: DynamicCache = getattr(out, _name())
    return cache
