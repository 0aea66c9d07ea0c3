"""Batched greedy generation that also says how sure the model was.

Confidence is the mean log-probability of the answer's tokens (end-of-turn included): 0 for
an answer the model was certain of, more negative the less sure it was. Curation and the
review queue rank records by it.

Prompts of one task share a long head (chat template, system prompt, the task's
instruction): often most of the prompt. That head is run through the model once per call and
its key/value cache reused by every batch, so each prompt costs only its own tail. Pads go
between the shared head and the tail, where the attention mask hides them and positions
(taken from the mask's running sum) stay those of an unpadded prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from whetstone.models.constrain import Grammar, advance_rows, mask_rows
from whetstone.models.decoding import Decoder, end_answer
from whetstone.models.kv_cache import cache_arg, cache_out

if TYPE_CHECKING:
    import torch
    from transformers.cache_utils import DynamicCache

    from whetstone.models.types import InferenceModel, Tokenizer


# The default batch of greedy decoding: a decode step's cost is mostly per-step overhead until
# the batch is large (bundled 135M model on 2 CPU cores: 46 ms a step at 1 row, 127 ms at 16,
# 149 ms at 32; 128 address records evaluated in 95 s at 64 against 174 s at 16). Answers do
# not depend on the batch: padding is masked, positions are those of an unpadded prompt.
GENERATE_BATCH = 64


@dataclass
class Generation:
    text: str
    confidence: float
    output_tokens: int
    latency_ms: float
    # A classify answer chosen by label likelihood (`models.label_scoring`): every label's
    # probability. None for a generated answer.
    label_probs: dict[str, float] | None = None


def _chat_ids(
    tok: Tokenizer, chat: list[dict[str, str]], *, add_generation_prompt: bool
) -> list[int]:
    """Token ids of `chat` rendered with the model's template."""
    encoded = tok.apply_chat_template(
        chat, add_generation_prompt=add_generation_prompt, tokenize=True
    )
    # A BatchEncoding (a mapping) where transformers returns a dict, else the ids.
    ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
    # transformers types the result of every mode (text, batches) alike: one tokenized chat
    # gives one list of ids.
    return list(cast("list[int]", ids))


def encode_prompts(tok: Tokenizer, chats: list[list[dict[str, str]]]) -> list[list[int]]:
    """Token ids of each chat rendered with the model's template, ready for the answer."""
    return [_chat_ids(tok, chat, add_generation_prompt=True) for chat in chats]


def answer_token_ids(
    tok: Tokenizer,
    prompt_ids: list[int],
    messages: list[dict[str, str]],
    answer: str,
    stop_ids: frozenset[int],
) -> list[int] | None:
    """The tokens a model is taught to write for `answer` after `messages` (whose prompt,
    from `encode_prompts`, is `prompt_ids`): the template's assistant turn holding `answer`,
    ended by `decoding.end_answer` at the first of `stop_ids`. None when the template renders
    the prompt differently once an answer follows, so the prompt inference sends is not its
    prefix: the caller decides what that means (training refuses such a model)."""
    full = _chat_ids(
        tok, [*messages, {"role": "assistant", "content": answer}], add_generation_prompt=False
    )
    if full[: len(prompt_ids)] != prompt_ids:
        return None
    return end_answer(tok, full[len(prompt_ids) :], stop_ids)


def prompt_forward(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, past: DynamicCache | None
) -> tuple[Any, DynamicCache, torch.Tensor]:
    """Run a left-padded batch of prompts (after the `past` head's cache, if any): the output
    with the last position's logits only, the cache, and each token's position (the mask's
    running sum, so pads never shift a prompt)."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    done = past.get_seq_length() if past is not None else 0
    out = model(
        input_ids=ids[:, done:],
        attention_mask=mask,
        position_ids=positions[:, done:],
        **cache_arg(past),
        use_cache=True,
        logits_to_keep=1,
    )
    return out, cache_out(out), positions


def _greedy(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    past: DynamicCache | None,
    max_new_tokens: int,
    decoder: Decoder,
    stop: Sequence[str] = (),
    grammars: Sequence[Grammar | None] = (),
) -> list[tuple[list[int], list[float]]]:
    """Greedy decoding of a left-padded batch: each row's tokens (end-of-turn included) and
    their log-probabilities, each row ending where `decoder` says. A row leaves the batch (and
    its cache) the step it finishes, so one long answer does not keep every finished row
    computing until it ends, as `model.generate` does; on a CPU, that tail was most of an
    evaluation's time. A row with a grammar (`grammars`, per row; none by default) chooses
    among the tokens it allows (`models.constrain`); log-probabilities stay the model's own."""
    import torch

    out, cache, positions = prompt_forward(model, ids, mask, past)
    logits = out.logits[:, -1, :]
    next_pos = positions[:, -1] + 1
    rows = list(range(ids.shape[0]))  # which input row each live batch row is
    answers: list[tuple[list[int], list[float]]] = [([], []) for _ in rows]
    constraints = [g.start() if g is not None else None for g in grammars] or [None] * len(rows)
    for _ in range(max_new_tokens):
        logp = torch.log_softmax(logits.float(), dim=-1)
        live = [constraints[r] for r in rows]
        token = mask_rows(logp, live, decoder.stop_ids).argmax(dim=-1)
        advance_rows(live, token.tolist())
        token_lp = logp.gather(1, token[:, None]).squeeze(1).tolist()
        keep = []
        for j, (row, t) in enumerate(zip(rows, token.tolist(), strict=True)):
            toks, lps = answers[row]
            toks.append(t)
            lps.append(token_lp[j])
            if len(toks) < max_new_tokens and not decoder.ended(toks, stop):
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(rows):
            sel = torch.tensor(keep, device=ids.device)
            cache.batch_select_indices(sel)
            mask, token, next_pos = mask[sel], token[sel], next_pos[sel]
            rows = [rows[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=next_pos[:, None],
            **cache_arg(cache),
            use_cache=True,
        )
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    return answers


def generate(
    model: InferenceModel,
    tok: Tokenizer,
    chats: list[list[dict[str, str]]],
    *,
    max_new_tokens: int = 256,
    batch_size: int = GENERATE_BATCH,
    max_prompt_tokens: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    share_prefix: bool = True,
    stop: Sequence[str] = (),
    schema: dict[str, Any] | None = None,
    schemas: Sequence[dict[str, Any] | None] | None = None,
) -> list[Generation]:
    """Greedy answers for many chats, batched by length to waste little on padding. Each
    answer ends, and becomes text, by the stop rule the serving engine uses too
    (`models.decoding`), `stop` strings included. With a JSON `schema` (every answer) or
    `schemas` (one per chat, None for a free answer) answers are constrained to JSON that
    keeps it (`models.constrain`); a schema it cannot use raises `SchemaError`."""
    import torch

    if schemas is not None and len(schemas) != len(chats):
        raise ValueError(f"{len(schemas)} schemas for {len(chats)} chats")
    prompts = encode_prompts(tok, chats)
    if max_prompt_tokens is not None:
        prompts = [p[-max_prompt_tokens:] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    dev = next(model.parameters()).device
    pad_id = pad_token(tok)
    decoder = Decoder.of(model, tok)
    grammars = _grammars(tok, decoder, len(chats), schema, schemas)
    # A model that answers in its own way (a classify label head) decodes nothing token by
    # token, so it has no use for a shared head's cache (nor for a grammar).
    custom = getattr(model, "answer_greedy", None)
    if custom is not None and any(grammars):
        raise ValueError("a label-head model answers with its labels; it takes no schema")
    head = shared_head(prompts) if share_prefix and custom is None else []
    head_cache = prefill(model, head, dev) if head else None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_rows(head, [prompts[i][len(head) :] for i in idx], pad_id)
        t0 = time.perf_counter()
        with torch.inference_mode():
            past = expand_cache(head_cache, len(idx)) if head_cache is not None else None
            if custom is not None:
                answers = custom(ids.to(dev), mask.to(dev), max_new_tokens)
            else:
                answers = _greedy(
                    model,
                    ids.to(dev),
                    mask.to(dev),
                    past,
                    max_new_tokens,
                    decoder,
                    stop,
                    [grammars[i] for i in idx],
                )
        elapsed = (time.perf_counter() - t0) * 1000 / len(idx)
        for i, (toks, lps) in zip(idx, answers, strict=True):
            conf = sum(lps) / len(lps) if lps else 0.0
            text = decoder.answer(toks, stop).text.strip()
            results[i] = Generation(
                text=text, confidence=conf, output_tokens=len(toks), latency_ms=elapsed
            )
        if on_batch is not None:
            on_batch(len(idx))
    return [r for r in results if r is not None]


def _grammars(
    tok: Tokenizer,
    decoder: Decoder,
    n: int,
    schema: dict[str, Any] | None,
    schemas: Sequence[dict[str, Any] | None] | None,
) -> list[Grammar | None]:
    """Each chat's compiled schema (None: unconstrained); equal schemas compile once."""
    from whetstone.models.constrain import compile_schema

    wanted = list(schemas) if schemas is not None else [schema] * n
    return [compile_schema(tok, decoder.stop_ids, s) if s is not None else None for s in wanted]


def pad_token(tok: Tokenizer) -> int:
    """The id that fills padding (masked out, so any id would do): the pad token, else EOS."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad if pad is not None else 0)


def pad_rows(
    head: list[int], tails: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of a batch of prompts that all start with `head`: pads after the
    shared head and before each tail, so every answer starts at the same column and the
    head's cache fits every row."""
    import torch

    width = len(head) + max(len(t) for t in tails)
    ids = torch.full((len(tails), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(tails), width), dtype=torch.long)
    ids[:, : len(head)] = torch.tensor(head, dtype=torch.long)
    mask[:, : len(head)] = 1
    for row, tail in enumerate(tails):
        ids[row, width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
        mask[row, width - len(tail) :] = 1
    return ids, mask


# A head shorter than this is not worth a separate forward pass.
MIN_SHARED_HEAD = 8


def shared_head(prompts: list[list[int]]) -> list[int]:
    """The longest token prefix every prompt starts with, leaving each prompt at least one
    token of its own (the model needs a fresh token to produce the first answer logits)."""
    if len(prompts) < 2:
        return []
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return first[:n] if n >= MIN_SHARED_HEAD else []


def prefill(model: torch.nn.Module, head: list[int], dev: torch.device) -> DynamicCache:
    """The one-row cache of `head`. A plain cache keeps every layer's keys: one the model
    makes for itself drops what falls out of a sliding window, and batches masking by
    position (`models.label_scoring`) need the whole head."""
    import torch
    from transformers import DynamicCache

    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([head], device=dev),
            **cache_arg(DynamicCache()),
            use_cache=True,
        )
    return cache_out(out)


def expand_cache(cache: DynamicCache, rows: int) -> DynamicCache:
    """A fresh cache holding the one-row head cache repeated for `rows` rows (generation
    appends to it in place, so every batch gets its own copy)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    fresh = DynamicCache()
    for i, layer in enumerate(cache.layers):
        # A prefilled attention layer (full or sliding window) holds its keys and values.
        assert isinstance(layer, DynamicLayer)
        assert layer.keys is not None and layer.values is not None
        fresh.update(
            layer.keys.expand(rows, -1, -1, -1).contiguous(),
            layer.values.expand(rows, -1, -1, -1).contiguous(),
            i,
        )
    return fresh
