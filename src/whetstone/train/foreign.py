"""Training configs people already have: an Axolotl or LLaMA-Factory YAML read as Whetstone
training settings, for the keys that mean the same thing here. The dialect is told by keys only
it uses; every key that does not map is named in the returned note, never dropped silently, and
a setting Whetstone cannot honour (a 4-bit base, a DPO stage) is refused in one line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from whetstone.errors import InvalidInput

AXOLOTL = "Axolotl"
LLAMA_FACTORY = "LLaMA-Factory"

# Keys only that dialect writes (shared ones such as learning_rate or seed tell nothing).
_MARKERS = {
    AXOLOTL: {
        "adapter",
        "micro_batch_size",
        "num_epochs",
        "sequence_len",
        "lora_target_modules",
        "lora_target_linear",
        "datasets",
        "val_set_size",
        "load_in_4bit",
        "load_in_8bit",
        "sample_packing",
        "base_model_config",
        "lr_scheduler",
    },
    LLAMA_FACTORY: {
        "model_name_or_path",
        "finetuning_type",
        "stage",
        "lora_rank",
        "lora_target",
        "cutoff_len",
        "per_device_train_batch_size",
        "num_train_epochs",
        "template",
        "dataset",
        "quantization_bit",
        "use_dora",
        "lr_scheduler_type",
    },
}

# Same meaning under another name (foreign key -> Whetstone key), per dialect.
_RENAMED = {
    AXOLOTL: {
        "base_model": "base_model",
        "lora_r": "lora_r",
        "lora_alpha": "lora_alpha",
        "lora_dropout": "lora_dropout",
        "learning_rate": "lr",
        "num_epochs": "epochs",
        "micro_batch_size": "batch_size",
        "gradient_accumulation_steps": "grad_accum",
        "sequence_len": "max_length",
        "max_steps": "max_steps",
        "seed": "seed",
        "weight_decay": "weight_decay",
        "max_grad_norm": "max_grad_norm",
        "sample_packing": "packing",
    },
    LLAMA_FACTORY: {
        "model_name_or_path": "base_model",
        "lora_rank": "lora_r",
        "lora_alpha": "lora_alpha",
        "lora_dropout": "lora_dropout",
        "learning_rate": "lr",
        "num_train_epochs": "epochs",
        "per_device_train_batch_size": "batch_size",
        "gradient_accumulation_steps": "grad_accum",
        "cutoff_len": "max_length",
        "max_steps": "max_steps",
        "seed": "seed",
        "weight_decay": "weight_decay",
        "max_grad_norm": "max_grad_norm",
        "packing": "packing",
    },
}

# Keys whose meaning Whetstone decides otherwise, named in the note as ignored with the reason.
_WHY_IGNORED = {
    "val_set_size": "validation split comes from the snapshot",
    "val_size": "validation split comes from the snapshot",
    "datasets": "training data are the task's records",
    "dataset": "training data are the task's records",
}

_SCHEDULERS = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant",
    "constant_with_warmup": "constant",
}

_QUANTISED = (
    "a quantised (4- or 8-bit) base (QLoRA) is not supported: Whetstone trains LoRA on the "
    "full-precision base; use a LoRA adapter without quantisation"
)


@dataclass
class Imported:
    """A foreign config read as Whetstone settings."""

    dialect: str
    settings: dict[str, Any]
    ignored: list[str] = field(default_factory=list)  # "key" or "key (why)"

    def note(self, where: str) -> str:
        ignored = ", ".join(self.ignored) if self.ignored else "none"
        return f"{where}: read as an {self.dialect} config; ignored keys: {ignored}"


def dialect(data: dict[str, Any]) -> str | None:
    """The dialect whose own keys the file uses most, or None for a Whetstone config."""
    counts = {name: len(markers & set(data)) for name, markers in _MARKERS.items()}
    best = max(counts, key=lambda name: counts[name])
    return best if counts[best] else None


def translate(data: dict[str, Any], where: str) -> Imported | None:
    """`data` as Whetstone settings when it is an Axolotl or LLaMA-Factory config; None when
    it is not (a Whetstone train.yaml, read as it is)."""
    name = dialect(data)
    if name is None:
        return None
    out = Imported(name, {})
    special: dict[str, Callable[[Any, Imported], None]] = {
        **_SPECIAL_COMMON,
        **(_AXOLOTL_SPECIAL if name == AXOLOTL else _LLAMA_FACTORY_SPECIAL),
    }
    if name == AXOLOTL and not data.get("adapter"):
        # Axolotl without an adapter fully fine-tunes: so does Whetstone then.
        out.settings["method"] = "full"
    for key, value in data.items():
        try:
            if key in special:
                special[key](value, out)
            elif key in _RENAMED[name]:
                out.settings[_RENAMED[name][key]] = value
            elif key in _WHY_IGNORED:
                out.ignored.append(f"{key} ({_WHY_IGNORED[key]})")
            else:
                out.ignored.append(key)
        except InvalidInput as e:
            raise InvalidInput(f"{where} ({name} config): {key}: {e}") from None
    _drop_lora_options_of_full(out)
    return out


def _drop_lora_options_of_full(out: Imported) -> None:
    """Without an adapter the LoRA keys shape nothing: named as ignored, not an error."""
    if out.settings.get("method") != "full":
        return
    for key in ("lora_r", "lora_alpha", "lora_dropout", "target_modules"):
        if key in out.settings:
            del out.settings[key]
            out.ignored.append(f"{key} (no adapter: full fine-tuning)")


def _refuse_quantised(value: Any, out: Imported) -> None:
    if value:
        raise InvalidInput(_QUANTISED)


def _adapter(value: Any, out: Imported) -> None:
    kind = str(value or "").lower()
    if kind == "qlora":
        raise InvalidInput(_QUANTISED)
    if kind not in ("lora", ""):
        raise InvalidInput(f"adapter {value!r} is not supported (lora, or none for full)")
    if kind == "lora":
        out.settings.setdefault("method", "lora")


def _target_modules(value: Any, out: Imported) -> None:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if value in (["all"], None):  # LLaMA-Factory's `all`: every linear layer, the default here
        return
    if not isinstance(value, list):
        raise InvalidInput("expected a list of module names")
    out.settings["target_modules"] = [str(v) for v in value]


def _target_linear(value: Any, out: Imported) -> None:
    if not value:
        out.ignored.append("lora_target_linear (false: the modules come from lora_target_modules)")


def _scheduler(value: Any, out: Imported) -> None:
    if str(value) not in _SCHEDULERS:
        raise InvalidInput(f"scheduler {value!r} is not supported ({', '.join(_SCHEDULERS)})")
    out.settings["scheduler"] = _SCHEDULERS[str(value)]


def _warmup_ratio(value: Any, out: Imported) -> None:
    if value:
        out.settings["warmup"] = float(value)


def _warmup_steps(value: Any, out: Imported) -> None:
    # Whetstone's warmup is a fraction below 1 and a number of steps from 1 up.
    out.settings["warmup"] = int(value) if value else 0.0


def _finetuning_type(value: Any, out: Imported) -> None:
    kind = str(value)
    if kind not in ("lora", "full"):
        raise InvalidInput(f"finetuning_type {kind!r} is not supported (lora or full)")
    # use_dora (read in either order) makes a LoRA run a DoRA one.
    if not (kind == "lora" and out.settings.get("method") == "dora"):
        out.settings["method"] = kind


def _use_dora(value: Any, out: Imported) -> None:
    if value and out.settings.get("method", "lora") == "lora":
        out.settings["method"] = "dora"


def _stage(value: Any, out: Imported) -> None:
    if str(value) != "sft":
        raise InvalidInput(
            f"stage {value!r} is not supported: Whetstone trains supervised fine-tuning (sft)"
        )


_SPECIAL_COMMON: dict[str, Callable[[Any, Imported], None]] = {
    "warmup_ratio": _warmup_ratio,
    "warmup_steps": _warmup_steps,
}
_AXOLOTL_SPECIAL: dict[str, Callable[[Any, Imported], None]] = {
    "adapter": _adapter,
    "load_in_4bit": _refuse_quantised,
    "load_in_8bit": _refuse_quantised,
    "lora_target_modules": _target_modules,
    "lora_target_linear": _target_linear,
    "lr_scheduler": _scheduler,
}
_LLAMA_FACTORY_SPECIAL: dict[str, Callable[[Any, Imported], None]] = {
    "finetuning_type": _finetuning_type,
    "use_dora": _use_dora,
    "quantization_bit": _refuse_quantised,
    "lora_target": _target_modules,
    "lr_scheduler_type": _scheduler,
    "stage": _stage,
}
