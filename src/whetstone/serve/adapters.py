"""Many adapters, one base: every PEFT adapter of the base model is loaded onto the SAME
PeftModel (one copy of the base weights), on first use, and the least recently used one is
deleted past `max_adapters`.

Only plain PEFT adapters (lora, dora, topk with LoRA) trained on this server's base model
can share it. Artefacts of `full` or `head` runs replace base weights or the output layer,
and an adapter of another base model needs that model: both are refused with a message
saying how to serve them (`whetstone export-model --format merged`, or a server of their
own base). The caller holds the engine's lock around every method here.

PEFT's `PeftModel` reads the config of its *active* adapter on every forward pass, base rows
and mixed batches included, and `delete_adapter` does not always leave that name valid (after
the last adapter goes it still names the deleted one: a KeyError on every later request). So
the pool keeps one invariant after every load and unload: `model` is the plain base model when
no adapter is loaded, else a `PeftModel` whose active adapter, on every layer, is a loaded one.
"""

from __future__ import annotations

import itertools
import json
import warnings
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from whetstone.registry import AdapterVersion
from whetstone.serve.errors import APIError
from whetstone.serve.metrics import Metrics

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

    from whetstone.models.types import CausalLM


@dataclass
class Loaded:
    name: str  # the adapter's key in the PeftModel ("a0", "a1", ...): any "T@N" is no key


def check_servable(av: AdapterVersion, base_hash: str) -> None:
    """Raise a 4xx/5xx APIError unless `av` can be served on this base."""
    if not av.path.is_dir():
        raise APIError(
            503,
            f"the files of {av.name} are missing ({av.path}); register it again or promote "
            "another version",
            code="adapter_unavailable",
        )
    if av.base_hash != base_hash:
        raise APIError(
            400,
            f"{av.name} was trained on base model {av.base_model}, not the one this server "
            "runs; start a server with that base model to serve it",
            code="model_incompatible",
        )
    meta = {}
    if (av.path / "whetstone_adapter.json").exists():
        meta = json.loads((av.path / "whetstone_adapter.json").read_text())
    if not av.is_peft or meta.get("labels_head"):
        raise APIError(
            400,
            f"{av.name} ({av.method}) is not a PEFT adapter and cannot share the base model; "
            f"serve it with `whetstone export-model {av.name} --format merged` and any "
            "OpenAI-compatible server",
            code="model_incompatible",
        )


class AdapterPool:
    def __init__(self, model: PreTrainedModel, base_hash: str, max_adapters: int, metrics: Metrics):
        self.model: CausalLM = (
            model  # the base model while no adapter is loaded, else a PeftModel on it
        )
        self.base_hash = base_hash
        self.max_adapters = max_adapters
        self.metrics = metrics
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()  # by "T@N", oldest use first
        self._names = (f"a{i}" for i in itertools.count())

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def get(self, av: AdapterVersion, pinned: Collection[str] = ()) -> Loaded:
        """The adapter, loaded if needed (evicting the least recently used one that is not
        `pinned`, i.e. not in the batch about to run), and marked as just used."""
        if av.name in self._loaded:
            self._loaded.move_to_end(av.name)
            return self._loaded[av.name]
        check_servable(av, self.base_hash)
        while len(self._loaded) >= self.max_adapters:
            victim = next((k for k in self._loaded if k not in pinned), None)
            if victim is None:
                break  # the batch itself needs them all; the engine never plans more
            self.unload(victim)
            self.metrics.adapter_evictions.inc()
        name = next(self._names)
        try:
            self._attach(av, name)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise APIError(
                503, f"cannot load {av.name} from {av.path}: {e}", code="adapter_unavailable"
            ) from None
        self._loaded[av.name] = Loaded(name=name)
        self.metrics.adapter_loads.inc()
        return self._loaded[av.name]

    def _attach(self, av: AdapterVersion, name: str) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(av.path), adapter_name=name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(
                self.model, str(av.path), adapter_name=name, is_trainable=False
            )
        self.model.eval()
        # A layer that this adapter is the first to target starts with it active while the
        # others keep theirs: make one adapter active everywhere again.
        self._activate(name)

    def activate(self, name: str) -> None:
        """Make loaded adapter `name` the one PEFT runs when a pass names no adapter per row
        (a DoRA adapter's own batch, which cannot use per-row names)."""
        if self._peft.active_adapters != [name]:
            self._activate(name)

    def _activate(self, name: str) -> None:
        # inference_mode: PEFT would otherwise switch the adapter's weights to trainable.
        self._peft.set_adapter(name, inference_mode=True)

    @property
    def _peft(self) -> PeftModel:
        """The model as PEFT's wrapper, which it is while any adapter is loaded."""
        from peft import PeftModel

        assert isinstance(self.model, PeftModel), "no adapter is loaded"
        return self.model

    def unload(self, ref: str) -> bool:
        loaded = self._loaded.pop(ref, None)
        if loaded is None:
            return False
        with warnings.catch_warnings():
            # PEFT warns when the adapter it deletes was the active one and says which it
            # picked instead; the pool picks one itself just below.
            warnings.simplefilter("ignore", UserWarning)
            self._peft.delete_adapter(loaded.name)
        if self._loaded:
            # PEFT picks a new active adapter per layer, and none at all when the layers it
            # looks at held only the deleted one: name one that is loaded, the same everywhere.
            self._activate(next(reversed(self._loaded.values())).name)
        else:
            # An empty PeftModel cannot run even base rows (no active adapter config to read):
            # go back to the base model, with PEFT's wrapper layers removed (no copy is made).
            self.model = self._peft.unload()
        return True
