"""Shared fixtures. Real-model fixtures are session-scoped: the bundled model loads once."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
    from serve_helpers import tiny_llama
    from whetstone.models import base

    return tiny_llama(tmp_path_factory.mktemp("tiny-base"), base.load_tokenizer(real_base))


@pytest.fixture
def project(tmp_path: Path) -> Any:
    import whetstone

    p = whetstone.init(tmp_path / "proj")
    yield p
    p.close()


# ---- the browser: Debian's Chromium through Playwright, one per test module ------------
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        reason = (
            f"Debian's Chromium is not installed at {CHROMIUM} (run scripts/install_browser.sh)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: under CI the browser tests must run")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()
