"""Batched generation: the shared prompt head is computed once and changes no answer."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from whetstone.models.generate import MIN_SHARED_HEAD, shared_head


def test_shared_head_leaves_every_prompt_a_token_of_its_own() -> None:
    head = list(range(20))
    assert shared_head([[*head, 1], [*head, 2, 3]]) == head
    # One prompt is the head itself: it keeps its last token.
    assert shared_head([head, [*head, 5]]) == head[:-1]
    short = head[:MIN_SHARED_HEAD]
    assert shared_head([[*short, 1], [*short, 2]]) == short
    assert shared_head([[1, *head], [2, *head]]) == []  # nothing shared at the start
    assert shared_head([[*head, 1]]) == []  # one prompt: nothing to share


def test_sharing_the_prompt_head_gives_the_same_answers(tiny_base_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from whetstone.models.generate import encode_prompts, generate
    from whetstone.records import to_messages

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    instruction = "Split the address into its parts and answer with one JSON object."
    inputs = ["1 Main St", "22 Oak Avenue Apt 4, Springfield IL", "9", "400 W 5th St Suite 12"]
    chats = [to_messages(text, instruction) for text in inputs]
    assert len(shared_head(encode_prompts(tok, chats))) >= MIN_SHARED_HEAD
    kwargs = {"max_new_tokens": 12, "batch_size": 3}  # two batches: the head cache is reused
    with warnings.catch_warnings():
        # The cache goes by the installed transformers' own name for it (renamed in 5.24),
        # so the old name's deprecation never fires.
        warnings.filterwarnings("error", message=".*past_key_values", category=FutureWarning)
        plain = generate(model, tok, chats, share_prefix=False, **kwargs)
        shared = generate(model, tok, chats, share_prefix=True, **kwargs)
    assert [g.text for g in shared] == [g.text for g in plain]
    assert [g.output_tokens for g in shared] == [g.output_tokens for g in plain]
    for a, b in zip(shared, plain, strict=True):
        assert abs(a.confidence - b.confidence) < 1e-4


def test_batched_greedy_matches_transformers_generate_one_by_one(real_model: Any) -> None:
    """The reference is `model.generate` on each prompt alone (no padding, no shared head,
    no rows leaving the batch): the batched decoder must give the same tokens and scores.
    The real model, since a tiny random one never ends an answer by itself: here answers end
    at different steps, so rows leave the batch mid-way."""
    import torch

    from whetstone.models.generate import encode_prompts, generate
    from whetstone.records import to_messages

    model, tok = real_model
    inputs = ["Say yes.", "Name three colours.", "Count from one to twenty in words.", "Hi"]
    chats = [to_messages(text, "Answer briefly.") for text in inputs]

    def reference(chat: list[dict[str, str]]) -> tuple[list[int], float]:
        ids = torch.tensor([encode_prompts(tok, [chat])[0]])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=24,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                return_dict_in_generate=True,
                output_scores=True,
            )
            scores = model.compute_transition_scores(
                out.sequences, out.scores, normalize_logits=True
            )[0]
        return out.sequences[0, ids.shape[1] :].tolist(), float(scores.mean())

    got = generate(model, tok, chats, max_new_tokens=24, batch_size=4)
    lengths = set()
    for chat, g in zip(chats, got, strict=True):
        want, confidence = reference(chat)
        assert g.output_tokens == len(want)
        assert g.text == tok.decode(want, skip_special_tokens=True).strip()
        # Padded batches and the shared head's cache reorder fp32 sums: tokens must agree
        # exactly, mean log-probabilities to float noise.
        assert abs(g.confidence - confidence) < 1e-3
        lengths.add(len(want))
    assert len(lengths) > 1, "every answer had the same length: rows never left the batch"
