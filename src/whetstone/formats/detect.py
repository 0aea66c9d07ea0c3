"""Which format a file is in, from its extension, its first row, or its folder layout."""

from __future__ import annotations

from pathlib import Path

from whetstone.errors import InvalidInput, NotFound
from whetstone.formats.tabular import is_hf_folder
from whetstone.storable import loads_json

IMPORT_FORMATS = ("openai", "evals", "instruction", "jsonl", "preference", "csv", "parquet", "hf")
EXPORT_FORMATS = ("openai", "evals", "instruction", "jsonl", "preference", "csv", "parquet", "hf")


def detect(path: Path) -> str:
    if not path.exists():
        raise NotFound(f"{path}: no such file or folder")
    if path.is_dir():
        if is_hf_folder(path):
            return "hf"
        raise InvalidInput(
            f"{path}: a folder, but not one written by datasets' save_to_disk "
            "(no dataset_info.json, state.json or dataset_dict.json)"
        )
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    with open(path, "rb") as f:
        if f.read(4) == b"PAR1":
            return "parquet"
    return _jsonl_dialect(path)


def _jsonl_dialect(path: Path) -> str:
    """Tell the JSON Lines dialects apart by the keys of the first row."""
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = loads_json(line)
            except ValueError:  # not JSON, or nested too deep
                raise InvalidInput(
                    f"{path}:{n}: cannot tell the format: not JSON Lines, CSV (.csv) or Parquet "
                    "(.parquet); pass --format"
                ) from None
            if not isinstance(row, dict):
                raise InvalidInput(
                    f"{path}:{n}: cannot tell the format: expected one JSON object per line"
                )
            keys = set(row)
            if "messages" in keys:
                return "openai"
            if "ideal" in keys:
                return "evals"
            if {"prompt", "chosen", "rejected"} <= keys:
                return "preference"
            if "instruction" in keys:
                return "instruction"
            if "input" in keys:
                return "jsonl"
            raise InvalidInput(
                f"{path}:{n}: cannot tell the format from the keys {sorted(keys)}: expected "
                "messages (openai), input + ideal (evals), instruction + output (instruction), "
                "prompt + chosen + rejected (preference) or input (Whetstone records); "
                "pass --format"
            )
    raise InvalidInput(f"{path}: empty file, nothing to import")
