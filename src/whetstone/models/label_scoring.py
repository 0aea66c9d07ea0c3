"""Classify tasks answered by label likelihood: no generation, one score per label.

A classify task's answer is one of a few known labels, so instead of letting the model write
(an untrained base model rambles for hundreds of tokens), each label is scored: the
log-likelihood of the tokens the model is taught to write for it (its assistant turn, see
`generate.answer_token_ids`) up to and including the end-of-turn token decoding stops at. The
end token is what tells "pos" from "positive": a label that is a prefix of another loses
unless the model would stop after it. The most likely label is the answer (ties: the first
in the caller's order); the softmax over the labels' log-likelihoods is its distribution.

The prompts' shared head (chat template, the instruction listing the labels) is run once per
call and its key/value cache reused, as in `models.generate`. Each batch is then ONE forward:
every row's own prompt tail followed by all labels' tokens packed as a trie (a shared label
prefix runs once), a 4D attention mask keeping each label to the prompt and its own earlier
tokens, and the vocabulary head applied only where a label token is predicted. Batches are
small (`LABEL_BATCH`): prompts sorted by length then pad little.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from whetstone.errors import InvalidInput
from whetstone.models.decoding import Decoder, end_answer
from whetstone.models.generate import (
    GENERATE_BATCH,
    answer_token_ids,
    encode_prompts,
    expand_cache,
    pad_rows,
    pad_token,
    prefill,
    shared_head,
)
from whetstone.models.kv_cache import cache_arg

if TYPE_CHECKING:
    import torch
    from transformers.cache_utils import DynamicCache

    from whetstone.models.types import CausalLM, Tokenizer


# The most rows per forward (a caller's larger batch is cut to it). Prompts are sorted by
# length, so a small batch pads little, and each row already brings its tail and every label's
# tokens (~50 positions for the bundled intents). Bundled 135M model, 2 CPU cores, 64 intents
# records: 9.2 records/s at 8 rows, 10.6 at 16, 6.3 at 64 (pads were half the tail tokens).
LABEL_BATCH = 16


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
    """Each label's answer tokens as training teaches them (`generate.answer_token_ids`: the
    chat template's assistant turn after `chat`'s prompt, ending at the first stop id). A
    classify answer's text is its label (`prompts.answer_text`)."""
    prompt = encode_prompts(tok, [chat])[0]
    out: list[list[int]] = []
    for label in labels:
        answer = answer_token_ids(tok, prompt, chat, label, decoder.stop_ids)
        if answer is None:
            # A template that renders the prompt differently once an answer follows cannot be
            # trained on (training refuses it); the label's plain tokens are the best guess.
            plain = tok.encode(label, add_special_tokens=False)
            answer = end_answer(tok, plain, decoder.stop_ids)
        out.append(answer)
    return out


@dataclass(frozen=True)
class LabelTrie:
    """The labels' answer tokens as one packed sequence: every distinct answer prefix that
    predicts a further token, once ("search_" starts two intents labels and is run once).
    Node i is token `tokens[i]` at `depths[i]` tokens after the prompt, attending to the
    prompt and to its ancestors (`ancestors[i]`, itself included)."""

    tokens: list[int]
    depths: list[int]
    ancestors: list[list[int]]
    paths: list[list[int]]  # per answer: the node that predicts each of its tokens after the first

    @classmethod
    def of(cls, answers: list[list[int]]) -> LabelTrie:
        index: dict[tuple[int, ...], int] = {}
        tokens: list[int] = []
        ancestors: list[list[int]] = []
        paths: list[list[int]] = []
        for answer in answers:
            path: list[int] = []
            for k in range(1, len(answer)):
                key = tuple(answer[:k])
                if key not in index:
                    index[key] = len(tokens)
                    tokens.append(answer[k - 1])
                    ancestors.append([*path, index[key]])
                path.append(index[key])
            paths.append(path)
        return cls(tokens, [len(a) - 1 for a in ancestors], ancestors, paths)


def _attention(
    model: CausalLM, allowed: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The additive 4D mask(s) the model takes for `allowed` (rows, queries, keys). A sliding
    window (Mistral, Gemma's local layers) is applied by position, as for an unpadded prompt;
    models that mix layer kinds take one mask per kind."""
    import torch

    config = model.config
    window = getattr(config, "sliding_window", None)
    if not getattr(config, "use_sliding_window", True):
        window = None
    dtype = next(model.parameters()).dtype

    def additive(ok: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill(
            ~ok, torch.finfo(dtype).min
        )[:, None]

    full = additive(allowed)
    if not window:
        return full
    q = positions[:, -allowed.shape[1] :]
    near = (q[:, :, None] - positions[:, None, :]) < window
    local = additive(allowed & near)
    if getattr(config, "layer_types", None):
        return {"full_attention": full, "sliding_attention": local}
    return local


def _score_batch(
    model: CausalLM,
    ids: torch.Tensor,
    mask: torch.Tensor,
    past: DynamicCache | None,
    answers: list[list[int]],
    trie: LabelTrie,
) -> torch.Tensor:
    """(rows, labels) log-likelihoods of each answer's tokens after each row's prompt, from
    ONE forward: each row's prompt tail (after the `past` head) followed by every label's
    tokens (`trie`), a 4D mask keeping each label to the prompt and its own earlier tokens.
    Logits are computed only where a label token is predicted (the prompt's last position
    and the trie's nodes), not over the prompt."""
    import torch
    from transformers import DynamicCache

    dev = ids.device
    rows, width = mask.shape
    done = past.get_seq_length() if past is not None else 0
    tail, n = width - done, len(trie.tokens)
    keys = mask.bool()
    allowed = torch.zeros((rows, tail + n, width + n), dtype=torch.bool, device=dev)
    # The tail: causal over the prompt, pads hidden (a pad query sees itself, never empty).
    causal = torch.ones((tail, tail), dtype=torch.bool, device=dev).tril()
    allowed[:, :tail, :done] = keys[:, None, :done]
    allowed[:, :tail, done:width] = causal & keys[:, None, done:]
    allowed[:, :tail, done:width] |= torch.eye(tail, dtype=torch.bool, device=dev)
    # The labels: the whole prompt, then their ancestors in the trie.
    allowed[:, tail:, :width] = keys[:, None, :]
    for i, up in enumerate(trie.ancestors):
        allowed[:, tail + i, width + torch.tensor(up, device=dev)] = True
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    depth = torch.tensor(trie.depths, device=dev, dtype=positions.dtype)
    positions = torch.cat([positions, positions[:, -1:] + 1 + depth], dim=1)
    tokens = torch.tensor(trie.tokens, device=dev, dtype=ids.dtype).expand(rows, -1)
    out = model(
        input_ids=torch.cat([ids[:, done:], tokens], dim=1),
        attention_mask=_attention(model, allowed, positions),
        position_ids=positions[:, done:],
        # A plain cache, not one the model would make: that drops keys out of a sliding
        # window by column, and the mask here already windows by position.
        **cache_arg(past if past is not None else DynamicCache()),
        use_cache=True,
        logits_to_keep=torch.arange(tail - 1, tail + n, device=dev),
    )
    logp = torch.log_softmax(out.logits.float(), dim=-1)  # (rows, 1 + nodes, vocab)
    scores = torch.empty((rows, len(answers)), dtype=torch.float32, device=dev)
    for j, (answer, path) in enumerate(zip(answers, trie.paths, strict=True)):
        at = torch.tensor([0, *(1 + p for p in path)], device=dev)
        target = torch.tensor(answer, device=dev).expand(rows, -1)
        scores[:, j] = logp[:, at, :].gather(2, target[:, :, None]).squeeze(-1).sum(dim=1)
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
    end_of_turn: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> list[LabelScores]:
    """Each chat answered with one of `labels` by likelihood (see the module doc), batched
    by prompt length like `models.generate.generate`, at most `LABEL_BATCH` rows a forward.
    Duplicate labels count once. `end_of_turn=False` scores the label's tokens alone, as
    lm-evaluation-harness scores a choice: only to compare with it (the end token is what
    lets a label that is a prefix of another lose, and it raised accuracy on the intents
    from 14.8% to 27.9% for the base model)."""
    import torch

    labels = list(dict.fromkeys(labels))
    if not labels:
        raise InvalidInput("label scoring needs at least one label")
    if not chats:
        return []
    answers = label_token_ids(tok, chats[0], labels, Decoder.of(model, tok))
    if not end_of_turn:
        answers = [a[:-1] or a for a in answers]
    trie = LabelTrie.of(answers)
    batch_size = min(batch_size, LABEL_BATCH)
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
            batch = _score_batch(model, ids.to(dev), mask.to(dev), past, answers, trie)
        scores = batch.tolist()
        elapsed = (time.perf_counter() - t0) * 1000 / len(idx)
        for i, lls in zip(idx, scores, strict=True):
            results[i] = choose(labels, lls, [len(a) for a in answers], elapsed)
        if on_batch is not None:
            on_batch(len(idx))
    return [results[i] for i in range(len(prompts))]
