"""Helpers for the tests and the soak benchmark: a tiny random base model, tiny PEFT adapters;
the real uvicorn server in a thread is `whetstone.serve.background.running`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from whetstone.serve.background import free_port, running

__all__ = ["free_port", "make_lora", "register_lora", "running", "tiny_llama", "wait_for"]


def tiny_llama(out: Path, tok: Any) -> Path:
    """A 2-layer random-weight Llama with tokenizer `tok`, saved as a local HF folder at `out`:
    it loads in milliseconds and stands in for the base model where only mechanics matter."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

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
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_lora(
    base_dir: Path,
    out: Path,
    seed: int,
    *,
    scale: float = 4.0,
    dora: bool = False,
    targets: tuple[str, ...] = ("q_proj", "v_proj", "o_proj"),
) -> Path:
    """A random LoRA adapter (non-zero, so it changes the answers) saved in PEFT format, on
    the `targets` modules of every layer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=list(targets),
        init_lora_weights=False,
        use_dora=dora,
    )
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    peft_model.save_pretrained(out)
    return out


def register_lora(project: Any, task: str, base_dir: Path, seed: int, tmp: Path, **kw: Any) -> Any:
    from whetstone import registry
    from whetstone.models import base

    folder = make_lora(base_dir, tmp / f"{task}-{seed}", seed, **kw)
    return registry.register(
        project,
        task,
        folder,
        method="dora" if kw.get("dora") else "lora",
        base_model=str(base_dir),
        base_hash=base.resolve(str(base_dir)).hash,
    )


def wait_for(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
