"""Classify tasks answered by label likelihood: no generation, one score per label.

A classify task's answer is one of a few known labels, so instead of letting the model write
(an untrained base model rambles for hundreds of tokens), each label is scored: the
log-likelihood of the tokens the model is taught to write for it (its assistant turn, see
`train.data.encode_pair`) up to and including the end-of-turn token decoding stops at. The
end token is what tells "pos" from "positive": a label that is a prefix of another loses
unless the model would stop after it. The most likely label is the answer (ties: the first
in the caller's order); the softmax over the labels' log-likelihoods is its distribution.

Each prompt is run through the model once (its shared head once per call, as in
`models.generate`); every label is then scored from that prompt's key/value cache, one small
forward per label over the whole batch, the cache cropped back to the prompt after each.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from whetstone.errors import InvalidInput
from whetstone.models.decoding import Decoder
from whetstone.models.generate import (
    GENERATE_BATCH,
    encode_prompts,
    expand_cache,
    pad_rows,
    pad_token,
    prefill,
    prompt_forward,
    shared_head,
)
from whetstone.models.kv_cache import cache_arg

if TYPE_CHECKING:
    import torch
    from transformers.cache_utils import DynamicCache

    from whetstone.models.types import CausalLM, Tokenizer


@dataclass(frozen=True)
class LabelScores:
    """One prompt's answer by label likelihood."""

    label: str  # the chosen label: the most likely, the first in label order on a tie
    log_likelihoods: dict[str, float]  # each label's summed token log-probability
    probs: dict[str, float]  # softmax over the labels' log-likelihoods (sums to 1)
    confidence: float  # log of the chosen label's probability: 0 = certain
    tokens: int  # the chosen label's token count, end-of-turn included
    latency_ms: float  # this prompt's share of its batch's time


def label_token_ids(
    tok: Tokenizer, chat: list[dict[str, str]], labels: list[str], decoder: Decoder
) -> list[list[int]]:
    """Each label's answer tokens as training teaches them (the chat template's assistant
    turn after `chat`'s prompt), ending at the first stop id, or with EOS appended when the
    template writes none. A classify answer's text is its label (`prompts.answer_text`)."""
    prompt = encode_prompts(tok, [chat])[0]
    out: list[list[int]] = []
    for label in labels:
        encoded = tok.apply_chat_template([*chat, {"role": "assistant", "content": label}])
        full = list(
            cast("list[int]", encoded["input_ids"] if isinstance(encoded, Mapping) else encoded)
        )
        # A template that renders the prompt differently once an answer follows cannot be
        # trained on (training refuses it); the label's plain tokens are the best guess.
        answer = (
            full[len(prompt) :]
            if full[: len(prompt)] == prompt
            else list(tok.encode(label, add_special_tokens=False))
        )
        end = next((i for i, t in enumerate(answer) if t in decoder.stop_ids), None)
        if end is not None:
            answer = answer[: end + 1]
        elif tok.eos_token_id is not None:
            answer = [*answer, int(tok.eos_token_id)]
        elif decoder.stop_ids:
            answer = [*answer, min(decoder.stop_ids)]
        else:
            raise InvalidInput(
                "the tokenizer and model have no end-of-turn token to score labels by"
            )
        out.append(answer)
    return out


def _score_batch(
    model: CausalLM,
    ids: torch.Tensor,
    mask: torch.Tensor,
    past: DynamicCache | None,
    answers: list[list[int]],
) -> torch.Tensor:
    """(rows, labels) log-likelihoods of each answer's tokens after each row's prompt."""
    import torch

    out, cache, positions = prompt_forward(model, ids, mask, past)
    first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
    rows = mask.shape[0]
    next_pos = positions[:, -1:] + 1
    scores = torch.empty((rows, len(answers)), dtype=torch.float32, device=ids.device)
    for j, answer in enumerate(answers):
        total = first[:, answer[0]]
        if len(answer) > 1:
            target = torch.tensor(answer, device=ids.device).expand(rows, -1)
            n = len(answer) - 1
            step = model(
                input_ids=target[:, :-1],
                attention_mask=torch.cat([mask, mask.new_ones((rows, n))], dim=1),
                position_ids=next_pos + torch.arange(n, device=ids.device),
                **cache_arg(cache),
                use_cache=True,
            )
            logp = torch.log_softmax(step.logits.float(), dim=-1)
            total = total + logp.gather(2, target[:, 1:, None]).squeeze(-1).sum(dim=1)
            # Back to the prompt alone, for the next label. A negative count drops that many
            # tokens in every supported transformers (5.x refuses a positive length).
            cache.crop(-n)
        scores[:, j] = total
    return scores


def choose(
    labels: list[str], lls: list[float], tokens: list[int], latency_ms: float
) -> LabelScores:
    """The answer a row's label log-likelihoods give: argmax (first wins a tie), softmax."""
    best = max(range(len(labels)), key=lambda j: lls[j])  # max() keeps the first maximum
    top = max(lls)
    norm = top + math.log(sum(math.exp(v - top) for v in lls))
    return LabelScores(
        label=labels[best],
        log_likelihoods=dict(zip(labels, lls, strict=True)),
        probs={lab: math.exp(v - norm) for lab, v in zip(labels, lls, strict=True)},
        confidence=lls[best] - norm,
        tokens=tokens[best],
        latency_ms=latency_ms,
    )


def score_labels(
    model: CausalLM,
    tok: Tokenizer,
    chats: list[list[dict[str, str]]],
    labels: list[str],
    *,
    batch_size: int = GENERATE_BATCH,
    max_prompt_tokens: int | None = None,
    share_prefix: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> list[LabelScores]:
    """Each chat answered with one of `labels` by likelihood (see the module doc), batched
    by prompt length like `models.generate.generate`. Duplicate labels count once."""
    import torch

    labels = list(dict.fromkeys(labels))
    if not labels:
        raise InvalidInput("label scoring needs at least one label")
    if not chats:
        return []
    answers = label_token_ids(tok, chats[0], labels, Decoder.of(model, tok))
    prompts = encode_prompts(tok, chats)
    if max_prompt_tokens is not None:
        prompts = [p[-max_prompt_tokens:] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: dict[int, LabelScores] = {}
    dev = next(model.parameters()).device
    head = shared_head(prompts) if share_prefix else []
    head_cache = prefill(model, head, dev) if head else None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_rows(head, [prompts[i][len(head) :] for i in idx], pad_token(tok))
        t0 = time.perf_counter()
        with torch.inference_mode():
            past = expand_cache(head_cache, len(idx)) if head_cache is not None else None
            scores = _score_batch(model, ids.to(dev), mask.to(dev), past, answers).tolist()
        elapsed = (time.perf_counter() - t0) * 1000 / len(idx)
        for i, lls in zip(idx, scores, strict=True):
            results[i] = choose(labels, lls, [len(a) for a in answers], elapsed)
        if on_batch is not None:
            on_batch(len(idx))
    return [results[i] for i in range(len(prompts))]
