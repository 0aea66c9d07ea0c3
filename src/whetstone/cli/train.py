"""`whetstone train`: snapshot a task's records, train an adapter, register it as `T@N`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from whetstone.cli import common


def register(app: typer.Typer) -> None:
    app.command(
        "train",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        epilog="Every training setting is also a flag: --lora-dropout 0.05, --topk-layers 4, --no-packing ... "
        "Each method has its own settings (--method M --print-config shows them); another method's "
        "setting is an error. Precedence: flags, then --config, then `train:` in whetstone.yaml.",
    )(train)


def _parse_extra(args: list[str]) -> dict[str, Any]:
    """`--key value`, `--flag` / `--no-flag` for any method's setting not declared below (the
    config then refuses one of another method than the chosen one)."""
    import yaml

    from whetstone.errors import InvalidInput
    from whetstone.train.config import all_options

    fields = all_options()
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise InvalidInput(f"unexpected argument {arg!r}")
        name, _, inline = arg[2:].partition("=")
        key = name.replace("-", "_")
        if key.startswith("no_") and key[3:] in fields and fields[key[3:]].annotation is bool:
            out[key[3:]] = False
            i += 1
            continue
        if key not in fields:
            raise InvalidInput(
                f"unknown option {arg.split('=')[0]!r} (training settings: "
                f"{', '.join('--' + k.replace('_', '-') for k in fields)})"
            )
        if fields[key].annotation is bool and not inline:
            out[key] = True
            i += 1
            continue
        if not inline:
            if i + 1 >= len(args):
                raise InvalidInput(f"option {arg} needs a value")
            inline = args[i + 1]
            i += 1
        # YAML parsing gives numbers, booleans and lists ("[q_proj, v_proj]") their types.
        value = yaml.safe_load(inline)
        if key == "target_modules" and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        out[key] = value
        i += 1
    return out


def train(
    ctx: typer.Context,
    task: Annotated[str | None, typer.Option("--task", "-t", help="The task to train.")] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="The training method (default lora; a wrong name lists them all). Each has "
            "its own settings: see --print-config.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="A train.yaml of training settings, or an Axolotl / LLaMA-Factory YAML (the "
            "keys that map are read, the others named).",
        ),
    ] = None,
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="Override the project's base model.")
    ] = None,
    from_snapshot: Annotated[
        str | None,
        typer.Option(
            "--from-snapshot", help="Train on this snapshot instead of freezing a new one."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps")] = None,
    lr: Annotated[
        float | None,
        typer.Option("--lr", "--learning-rate", help="Learning rate (default by method)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Continue the run RUN_ID from its last checkpoint."),
    ] = None,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config", help="Print the chosen method's effective config (YAML) and exit."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train an adapter for TASK on its records' train split and register it as a candidate."""
    from whetstone.errors import InvalidInput, NotFound
    from whetstone.evaluate.metrics import main_score
    from whetstone.train import resume_run, train_task
    from whetstone.train.config import project_config

    flags = {
        "method": method,
        "base_model": base_model,
        "epochs": epochs,
        "max_steps": max_steps,
        "lr": lr,
        "batch_size": batch_size,
        "max_length": max_length,
        "seed": seed,
        **_parse_extra(list(ctx.args)),
    }
    p = None
    try:
        p = common.project()
    except NotFound:
        if not print_config:  # printing the config needs no project
            raise
    cfg, notes = project_config(p, config, flags)
    for note in notes:  # an Axolotl / LLaMA-Factory file's ignored keys, never silently
        common.err.print(f"note: {note}", markup=False, highlight=False)
    if print_config:
        common.out.print(cfg.to_yaml(), end="", markup=False, highlight=False)
        return
    assert p is not None
    if resume:
        if any(v is not None for v in flags.values()) or config or task or from_snapshot:
            raise InvalidInput(
                "--resume continues a run with its own config: give no other training options"
            )
        result = resume_run(p, resume, metric=main_score)
    else:
        if not task:
            raise InvalidInput("give --task T (or --resume RUN_ID)")
        result = train_task(p, task, cfg, snapshot_id=from_snapshot, metric=main_score)
    _report(result, as_json)


def _report(result: Any, as_json: bool) -> None:
    import os

    if int(os.environ.get("RANK", "0")) != 0:  # under a launcher, the main process reports
        return
    if as_json:
        from dataclasses import asdict

        d = asdict(result)
        d.pop("history")
        common.print_json(d)
        return
    metric = "n/a" if result.best_metric is None else f"{result.best_metric:.3f}"
    common.out.print(
        f"Registered [bold]{result.adapter}[/bold] (candidate) · method {result.method} · "
        f"best validation metric {metric} at step {result.best_step} of {result.steps}"
        + (" (stopped early)" if result.stopped_early else "")
    )
    common.out.print(
        f"run {result.run_id} · snapshot {result.snapshot_id} · {result.tokens_per_s:,.0f} tokens/s · "
        f"train {result.timings['train_s']:.0f}s, validation {result.timings['eval_s']:.0f}s "
        f"({result.timings['validation_share']:.0%}) · {result.run_dir}"
    )
