"""Shared fixtures. Real-model fixtures are session-scoped: the bundled model loads once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pg import pg_server_url, pg_url, store_url  # noqa: F401  (PostgreSQL fixtures)

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _fresh_cli_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's global options (--project, --db) live in a module-level object that each
    invocation of the main app sets; a test that builds its own app sets only some of them, so
    every test starts from empty options rather than those of the test before."""
    from whetstone.cli import common

    monkeypatch.setattr(common, "state", common.State())


@pytest.fixture(scope="session")
def real_base() -> Any:
    """The bundled SmolLM2-135M-Instruct, resolved (converted to safetensors once, cached)."""
    from whetstone.models import base

    return base.resolve(None)


@pytest.fixture(scope="session")
def real_model(real_base: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of the bundled base model, loaded once per test session.
    Tests must not modify it; training tests load their own copy."""
    from whetstone.models import base

    return base.load(real_base)


@pytest.fixture(scope="session")
def tiny_base_dir(real_base: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random-weight Llama with the real tokenizer, saved as a local HF folder:
    it loads in milliseconds and can stand in for the base model in mechanics tests."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from whetstone.models import base

    tok = base.load_tokenizer(real_base)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    out = tmp_path_factory.mktemp("tiny-base")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def project(tmp_path: Path) -> Any:
    import whetstone

    p = whetstone.init(tmp_path / "proj")
    yield p
    p.close()
