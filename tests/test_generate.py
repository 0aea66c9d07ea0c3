"""Batched generation: the shared prompt head is computed once and changes no answer."""

from __future__ import annotations

from pathlib import Path

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
    plain = generate(model, tok, chats, share_prefix=False, **kwargs)
    shared = generate(model, tok, chats, share_prefix=True, **kwargs)
    assert [g.text for g in shared] == [g.text for g in plain]
    assert [g.output_tokens for g in shared] == [g.output_tokens for g in plain]
    for a, b in zip(shared, plain, strict=True):
        assert abs(a.confidence - b.confidence) < 1e-4
