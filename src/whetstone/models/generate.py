"""Batched greedy generation that also says how sure the model was.

Confidence is the mean log-probability of the answer's tokens (end-of-turn included): 0 for
an answer the model was certain of, more negative the less sure it was. Curation and the
review queue rank records by it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Generation:
    text: str
    confidence: float
    output_tokens: int
    latency_ms: float


def encode_prompts(tok: Any, chats: list[list[dict[str, str]]]) -> list[list[int]]:
    """Token ids of each chat rendered with the model's template, ready for the answer."""
    out = []
    for chat in chats:
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        out.append(list(ids))
    return out


def generate(
    model: Any,
    tok: Any,
    chats: list[list[dict[str, str]]],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    max_prompt_tokens: int | None = None,
    on_batch: Any = None,
) -> list[Generation]:
    """Greedy answers for many chats, batched by length to waste little on padding."""
    import torch

    prompts = encode_prompts(tok, chats)
    if max_prompt_tokens is not None:
        prompts = [p[-max_prompt_tokens:] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    dev = next(model.parameters()).device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        # Left padding, so every answer starts at the same column.
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            p = prompts[i]
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
                eos_token_id=tok.eos_token_id,
                return_dict_in_generate=True,
                output_scores=True,
            )
            scores = model.compute_transition_scores(
                out.sequences, out.scores, normalize_logits=True
            )
        elapsed = (time.perf_counter() - t0) * 1000 / len(idx)
        new = out.sequences[:, width:].cpu()
        scores = scores.float().cpu()
        for row, i in enumerate(idx):
            toks = new[row].tolist()
            n = len(toks)
            if tok.eos_token_id in toks:
                n = toks.index(tok.eos_token_id) + 1
            lp = scores[row, :n]
            conf = float(lp.mean()) if n else 0.0
            text = tok.decode(toks[:n], skip_special_tokens=True).strip()
            results[i] = Generation(text=text, confidence=conf, output_tokens=n, latency_ms=elapsed)
        if on_batch is not None:
            on_batch(len(idx))
    return [r for r in results if r is not None]
