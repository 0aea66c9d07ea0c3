"""The training config: `TrainConfig`, the options every method shares, and one subclass per
method, declared in the method's module under `whetstone.train.methods` (the registry there is
the one list of methods). Together they form a pydantic union discriminated by `method`.

The keys are the YAML keys and, with `-` for `_`, the CLI flags (`lora_r` ↔ `--lora-r`). An
unknown key, or an option of another method (`--lora-r` with method full), is a one-line error
that names the key: a setting is never silently ignored."""

from __future__ import annotations

import operator
from functools import cache, reduce
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NamedTuple, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from whetstone.errors import InvalidInput, from_validation
from whetstone.train import methods

if TYPE_CHECKING:
    from whetstone.project import Project

COMMAND_LINE = "command line"


class TrainConfig(BaseModel):
    """The options of every method. Build one with `train_config(method=..., ...)` or a
    method's own class (e.g. `LoraConfig`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: str
    # The method's learning rate when `lr` is not given (measured on the demo address task
    # with the bundled 135M model: adapters tolerate a high rate, full fine-tuning needs a low one).
    default_lr: ClassVar[float]
    # Task kinds the method can train (None: every kind).
    task_kinds: ClassVar[frozenset[str] | None] = None
    # Whether `tune` searches the method when not told which methods to search.
    tuned_by_default: ClassVar[bool] = False

    base_model: str | None = Field(None, description="default: the project's base model")
    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    lr: float | None = Field(None, gt=0, description="default: by method")
    max_length: int = Field(512, ge=16, description="tokens per example, prompt + answer")
    seed: int = 0
    eval_every: int | None = Field(
        None,
        ge=1,
        description="steps between validations; default: up to 4 a run, fewer when one "
        "would cost over a tenth of the training between two",
    )
    patience: int = Field(3, ge=1, description="validations without improvement before stopping")
    weight_decay: float = Field(0.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _only_this_methods_options(cls, data: Any) -> Any:
        if cls is TrainConfig:
            raise ValueError(
                "TrainConfig holds the options every method shares: build a config with "
                "train_config(method=..., ...) or a method's own class"
            )
        if isinstance(data, dict):
            name = cls.model_fields["method"].default
            for key in data:
                problem = option_problem(str(key), name)
                if problem:
                    raise ValueError(problem)
        return data

    @property
    def learning_rate(self) -> float:
        return self.default_lr if self.lr is None else self.lr

    @property
    def uses_lora(self) -> bool:
        """Whether the method trains LoRA weights (so `lora_r` shapes it)."""
        return False

    def effective(self) -> dict[str, Any]:
        """Every key with its value as training will use it (lr resolved)."""
        d = self.model_dump()
        d["lr"] = self.learning_rate
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.effective(), sort_keys=False)


class LoopConfig(TrainConfig):
    """The options of the language-model training loop: every method but the label head."""

    batch_size: int = Field(8, ge=1, description="examples per micro-batch")
    grad_accum: int = Field(1, ge=1)
    truncation: Literal["left", "drop"] = Field(
        "left", description="over-long prompt: cut from the left (keeping the answer) or drop it"
    )
    eval_max_records: int = Field(
        32, ge=1, description="validation sample: at most this many records"
    )
    eval_max_tokens: int = Field(
        3072, ge=16, description="validation sample: at most this many tokens (prompt + answer)"
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="answer budget of the end-of-run generations; default: from the references",
    )
    warmup: float = Field(
        0.05, ge=0, description="fraction of steps (<1) or a number of steps (>=1)"
    )
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    packing: bool = Field(
        True, description="pack several examples per row (attention kept inside each)"
    )
    pack_length: int = Field(
        1024,
        ge=16,
        description="tokens per packed row (at least max_length): longer rows share the instruction more",
    )
    save_every: int = Field(50, ge=1, description="steps between resumable checkpoints")
    teacher_weight: float = Field(
        1.0,
        ge=0,
        le=10,
        description="loss weight of a teacher's label (distill, synthesize) against a person's 1",
    )


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def config_class(method: str) -> type[TrainConfig]:
    return methods.get(method).CONFIG


def owners(key: str) -> list[str]:
    """The methods that have option `key`."""
    return [name for name in methods.names() if key in config_class(name).model_fields]


def owners_text(key: str) -> str:
    """`lora, dora or topk`."""
    *others, last = owners(key)
    return f"{', '.join(others)} or {last}" if others else last


@cache
def all_options() -> dict[str, Any]:
    """Every option of any method, with its pydantic field (for the CLI's flag parsing)."""
    out: dict[str, Any] = {}
    for name in methods.names():
        out |= config_class(name).model_fields
    return out


def option_problem(key: str, method: str) -> str | None:
    """Why `key` is not an option of `method`, in one line; None when it is."""
    if key in config_class(method).model_fields:
        return None
    if key not in all_options():
        return f"unknown training setting {key!r} (known: {', '.join(all_options())})"
    return f"{key} ({flag(key)}) is an option of {owners_text(key)}, not of method {method}"


def options_of(method: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that are options of `method`: for settings shared by runs of several
    methods (a `tune` base config), each run takes its own."""
    return {k: v for k, v in settings.items() if k in config_class(method).model_fields}


@cache
def _union() -> TypeAdapter[Any]:
    union = reduce(operator.or_, (config_class(name) for name in methods.names()))
    # The union is built from the registry at run time, which a type checker cannot follow.
    return TypeAdapter(cast(Any, Annotated[union, Field(discriminator="method")]))


def _first_error(e: ValidationError, where: str) -> InvalidInput:
    # Each location starts with the union's tag, the method's name: not a key the user wrote.
    return from_validation(e, where, skip=methods.names())


def _chosen_method(layers: list[tuple[str, dict[str, Any]]]) -> str:
    """The method the last layer that names one chooses (lora when none does)."""
    where, method = "", methods.DEFAULT
    for w, values in layers:
        if "method" in values:
            where, method = w, str(values["method"])
    if method not in methods.names():
        raise InvalidInput(
            f"{where}: unknown method {method!r} (choose from {', '.join(methods.names())})"
        )
    return method


def build(*layers: tuple[str, dict[str, Any]]) -> TrainConfig:
    """Merge (where, settings) layers, later ones winning, and validate. `where` names the
    layer in errors, e.g. the YAML file or "command line". Every key must be an option of the
    method the layers choose."""
    given = [(w, {k: v for k, v in values.items() if v is not None}) for w, values in layers]
    method = _chosen_method(given)
    merged: dict[str, Any] = {"method": method}
    cfg = None
    for where, values in given:
        for key in values:
            problem = option_problem(key, method)
            if problem:
                raise InvalidInput(f"{where}: {problem}")
        merged |= {**values, "method": method}
        try:
            cfg = _union().validate_python(merged)
        except ValidationError as e:
            raise _first_error(e, where) from None
    return cfg or _union().validate_python(merged)


def train_config(**settings: Any) -> TrainConfig:
    """The Python API's way to a config: `train_config(method="dora", lora_r=8)`."""
    return build(("train_config", settings))


def from_stored(values: dict[str, Any], where: str, task_kind: str) -> TrainConfig:
    """A run's stored config.yaml. Runs written before configs were per method hold every
    option of every method (the others' were ignored), and `head` on a classify task then meant
    the label head: such a config is read as the method it trained. Unknown keys stay errors."""
    method = str(values.get("method") or methods.DEFAULT)
    if method in methods.names():
        own = config_class(method).model_fields
        if any(k in all_options() and k not in own for k in values):  # the old flat form
            if method == "head" and task_kind == "classify":
                method = "label_head"
            own = config_class(method).model_fields
            values = {k: v for k, v in values.items() if k in own or k not in all_options()}
            values["method"] = method
    return build((where, values))


class ReadSettings(NamedTuple):
    values: dict[str, Any]
    # For an Axolotl or LLaMA-Factory file: its dialect and the keys it ignored, to be shown.
    note: str | None = None


def read_yaml(path: str | Path) -> ReadSettings:
    """A train.yaml, or an Axolotl / LLaMA-Factory config read for the keys that map."""
    from whetstone.train.foreign import translate
    from whetstone.util import read_yaml_mapping

    data = read_yaml_mapping(path, "training settings")
    imported = translate({str(k): v for k, v in data.items()}, str(path))
    if imported is not None:
        return ReadSettings(imported.settings, imported.note(str(path)))
    # A train.yaml may use the flag spelling (lora-r) as well as the key (lora_r).
    return ReadSettings({str(k).replace("-", "_"): v for k, v in data.items()})


def project_config(
    project: Project | None,
    config: str | Path | None,
    flags: dict[str, Any],
    flags_where: str = COMMAND_LINE,
) -> tuple[TrainConfig, list[str]]:
    """The config a run trains with: the project's `train:` section, then the `config` file,
    then `flags`, later layers winning; with the notes to show (a foreign file's ignored keys).
    The one way the CLI and the Python API build it."""
    layers: list[tuple[str, dict[str, Any]]] = []
    notes: list[str] = []
    if project is not None:
        layers.append((f"{project.config_path} (train:)", project.section("train")))
    if config is not None:
        read = read_yaml(config)
        layers.append((str(config), read.values))
        notes += [read.note] if read.note else []
    layers.append((flags_where, flags))
    return build(*layers), notes
