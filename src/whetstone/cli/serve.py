"""`whetstone serve` and `whetstone export-model`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from whetstone.cli import common


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("export-model")(export_model)


def serve(
    host: Annotated[str | None, typer.Option("--host", help="Default 127.0.0.1.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Default 8000.")] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            "--api-key-file",
            help="Require the key in this file (its first line) on every endpoint but "
            "/healthz, as `Authorization: Bearer KEY`. Or set WHETSTONE_API_KEY.",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="The key itself. Avoid: every user of the machine sees it in `ps`; use "
            "--api-key-file or WHETSTONE_API_KEY.",
        ),
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option("--max-batch-size")] = None,
    max_wait_ms: Annotated[float | None, typer.Option("--max-wait-ms")] = None,
    max_adapters: Annotated[
        int | None, typer.Option("--max-adapters", help="Adapters kept loaded (LRU).")
    ] = None,
    max_body_bytes: Annotated[int | None, typer.Option("--max-body-bytes")] = None,
    max_tokens_limit: Annotated[int | None, typer.Option("--max-tokens-limit")] = None,
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="Override the project's base model.")
    ] = None,
) -> None:
    """Serve every task's production adapter behind an OpenAI-compatible API, capturing each
    answer as a record (settings also come from `serve:` in whetstone.yaml).

    Require an API key with WHETSTONE_API_KEY or --api-key-file (not --api-key: `ps` shows it)."""
    import uvicorn

    from whetstone.errors import InvalidInput
    from whetstone.serve import server
    from whetstone.serve.app import create_app
    from whetstone.serve.settings import Settings, read_key_file

    if api_key is not None and api_key_file is not None:
        raise InvalidInput("give the API key once: --api-key-file or --api-key, not both")
    if api_key is not None:
        common.err.print(
            "warning: --api-key shows the key to every user of this machine (`ps`); "
            "use --api-key-file or WHETSTONE_API_KEY"
        )
    p = common.project()
    settings = Settings.load(
        p.section("serve"),
        host=host,
        port=port,
        api_key=read_key_file(api_key_file) if api_key_file is not None else api_key,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_adapters=max_adapters,
        max_body_bytes=max_body_bytes,
        max_tokens_limit=max_tokens_limit,
    )
    app = create_app(p, settings, base_model=base_model)
    if settings.api_key is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        common.err.print(f"warning: serving on {settings.host} with no API key")
    common.err.print(f"Serving on http://{settings.host}:{settings.port}/v1 (review page: /review)")
    uvicorn.Server(server.config(app, settings, host=settings.host, port=settings.port)).run()


def export_model(
    refs: Annotated[
        list[str] | None,
        typer.Argument(help="Adapter versions T@N (vllm: default every production adapter)."),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option("--format", "-f", help="peft | merged | vllm | gguf | gguf-lora | ollama"),
    ] = "peft",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder to write (new or empty).")
    ] = None,
    quant: Annotated[
        str, typer.Option("--quant", help="GGUF type: f16 | q8_0 | q4_k_m (gguf, ollama).")
    ] = "f16",
    check_records: Annotated[
        int,
        typer.Option(
            "--check-records", help="GGUF: held-out test records the export is checked on."
        ),
    ] = 32,
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance", help="GGUF: largest drop of the main metric allowed, in points."
        ),
    ] = 2.0,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace the folder an earlier export wrote there (nothing else).",
        ),
    ] = False,
    accept_drop: Annotated[
        bool,
        typer.Option(
            "--accept-drop",
            help="GGUF: write the export even when its check refuses it (the report keeps "
            "the refusal).",
        ),
    ] = False,
) -> None:
    """Write adapters for other engines: a PEFT folder (vLLM --lora-modules, LoRAX), a merged
    full model, a vLLM launch script for all production adapters, or for devices a GGUF file
    (llama.cpp, LM Studio), a GGUF LoRA over the base's GGUF, or an Ollama folder. Every GGUF
    export is checked against the PyTorch adapter on held-out records before it is written."""
    from whetstone.errors import InvalidInput
    from whetstone.registry import export

    p = common.project()
    refs = refs or []
    if fmt not in export.FORMATS:
        raise InvalidInput(f"unknown format {fmt!r} (choose from {', '.join(export.FORMATS)})")
    if fmt == "vllm":
        result = export.export_vllm(p, refs, out or Path("vllm-export"), force=force)
    else:
        if len(refs) != 1:
            raise InvalidInput(f"--format {fmt} exports one adapter version: give T@N")
        default = Path(f"{refs[0].replace('@', '-v')}-{fmt}")
        if fmt in export.GGUF_FORMATS:
            result = _export_gguf(
                p, refs[0], out or default, fmt, quant, check_records, tolerance, force, accept_drop
            )
        else:
            fn = export.export_peft if fmt == "peft" else export.export_merged
            result = fn(p, refs[0], out or default, force=force)
    for w in result.warnings:
        common.err.print(f"warning: {w}")
    common.out.print(f"Wrote {result.path}")


def _export_gguf(
    p: Any,
    ref: str,
    out: Path,
    fmt: str,
    quant: str,
    records: int,
    tolerance: float,
    force: bool,
    accept_drop: bool,
) -> Any:
    from whetstone.errors import InvalidInput
    from whetstone.evaluate.ondevice import export_check
    from whetstone.registry import export

    if records < 1:
        raise InvalidInput("--check-records must be at least 1")
    check = export_check(p, records=records, tolerance=tolerance, accept_drop=accept_drop)
    result = export.export_gguf(p, ref, out, fmt=fmt, quant=quant, force=force, check=check)
    report = result.report or {}
    common.out.print(f"check: {report.get('check')}", markup=False, highlight=False)
    style = "green" if report.get("passed") else "yellow"
    common.out.print(f"[{style}]{report.get('verdict')}[/{style}]")
    if report.get("accepted_drop"):
        common.err.print("warning: the check refused this export; written because of --accept-drop")
    return result
