"""Classify tasks answered by label likelihood (`models.label_scoring`): the right label, the
end-of-turn token telling a label from its prefix, ties in label order, agreement with a plain
full forward, and evaluation using it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import whetstone
from whetstone.models.label_scoring import label_token_ids, score_labels
from whetstone.records import to_messages

INSTRUCTION = "Answer with exactly one of these labels: New York, New Jersey, Boston."
INPUTS = ["I live by the Hudson", "Trenton is nice", "a", "Where is the Freedom Trail? " * 3]


@pytest.fixture(scope="module")
def tiny(tiny_base_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_base_dir)


def _chats(inputs: list[str] = INPUTS) -> list[list[dict[str, str]]]:
    return [to_messages(text, INSTRUCTION) for text in inputs]


def _biased(tiny_base_dir: Path, bias: dict[int, float]) -> Any:
    """The tiny Llama whose next-token distribution is fixed: a zero-weight lm_head whose
    bias gives every listed token its logit (others 0), at every position."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    vocab = model.config.vocab_size
    head = torch.nn.Linear(model.config.hidden_size, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for t, v in bias.items():
            head.bias[t] = v
    model.lm_head = head
    return model


def _ids(tok: Any, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False))


def test_label_tokens_are_the_trained_answer_then_end_of_turn(tiny: tuple[Any, Any]) -> None:
    from whetstone.models.decoding import Decoder

    model, tok = tiny
    got = label_token_ids(tok, _chats()[0], ["New York", "pos", "positive"], Decoder.of(model, tok))
    eos = tok.eos_token_id
    assert got == [
        [*_ids(tok, "New York"), eos],
        [*_ids(tok, "pos"), eos],
        [*_ids(tok, "positive"), eos],
    ]


def test_the_dominant_label_wins_and_probabilities_sum_to_one(
    tiny_base_dir: Path, tiny: tuple[Any, Any]
) -> None:
    _, tok = tiny
    labels = ["Boston", "New York", "New Jersey"]
    boston = _ids(tok, "Boston")
    model = _biased(tiny_base_dir, dict.fromkeys([*boston, tok.eos_token_id], 8.0))
    out = score_labels(model, tok, _chats(), labels, batch_size=3)
    assert [s.label for s in out] == ["Boston"] * len(INPUTS)
    for s in out:
        assert abs(sum(s.probs.values()) - 1.0) < 1e-6
        assert s.confidence == pytest.approx(math.log(s.probs["Boston"]))
        assert s.tokens == len(boston) + 1


def test_labels_sharing_a_first_token_are_told_apart(
    tiny_base_dir: Path, tiny: tuple[Any, Any]
) -> None:
    import torch

    _, tok = tiny
    new, york = _ids(tok, "New York")
    new2, jersey = _ids(tok, "New Jersey")
    assert new2 == new
    eos = tok.eos_token_id
    for favoured, want in ((jersey, "New Jersey"), (york, "New York")):
        model = _biased(tiny_base_dir, {new: 6.0, favoured: 6.0, eos: 6.0})
        out = score_labels(model, tok, _chats(), ["New York", "New Jersey"])
        assert {s.label for s in out} == {want}
    # The end of turn is scored: "New" is its token then end-of-turn, "New York" one more.
    bias = {new: 6.0, york: 3.0, eos: 1.0}
    model = _biased(tiny_base_dir, bias)
    logp = torch.log_softmax(model.lm_head.bias.detach().float(), -1)
    s = score_labels(model, tok, _chats()[:1], ["New York", "New"])[0]
    assert s.log_likelihoods["New"] == pytest.approx(float(logp[new] + logp[eos]), abs=1e-4)
    want_ny = float(logp[new] + logp[york] + logp[eos])
    assert s.log_likelihoods["New York"] == pytest.approx(want_ny, abs=1e-4)


def test_ties_go_to_the_first_label_in_order(tiny_base_dir: Path, tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    model = _biased(tiny_base_dir, {})  # uniform: every one-token label is equally likely
    for labels in (["yes", "no"], ["no", "yes"]):
        out = score_labels(model, tok, _chats(), labels)
        assert {s.label for s in out} == {labels[0]}
        for s in out:
            assert s.log_likelihoods["yes"] == s.log_likelihoods["no"]  # an exact tie
            assert s.probs == pytest.approx({"yes": 0.5, "no": 0.5})


def _brute_force(model: Any, tok: Any, chats: Any, labels: list[str]) -> list[list[float]]:
    """Each label's log-likelihood from one plain forward of prompt + answer, no cache."""
    import torch

    from whetstone.models.decoding import Decoder
    from whetstone.models.generate import encode_prompts

    answers = label_token_ids(tok, chats[0], labels, Decoder.of(model, tok))
    out = []
    for prompt in encode_prompts(tok, chats):
        row = []
        for answer in answers:
            ids = torch.tensor([prompt + answer])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            n = len(prompt)
            row.append(sum(float(logp[n - 1 + k, t]) for k, t in enumerate(answer)))
        out.append(row)
    return out


def _agrees(model: Any, tok: Any) -> None:
    labels = ["New York", "New Jersey", "Boston", "pos", "positive"]
    chats = _chats()
    want = _brute_force(model, tok, chats, labels)
    # Two batches of unequal prompts (pads between head and tail), the head cache shared.
    for share in (True, False):
        got = score_labels(model, tok, chats, labels, batch_size=3, share_prefix=share)
        for s, row in zip(got, want, strict=True):
            for label, ll in zip(labels, row, strict=True):
                assert abs(s.log_likelihoods[label] - ll) < 1e-4, (label, s, row)


def test_scores_agree_with_a_plain_full_forward(tiny: tuple[Any, Any]) -> None:
    from whetstone.models.generate import encode_prompts, shared_head

    model, tok = tiny
    assert shared_head(encode_prompts(tok, _chats()))  # the shared head path is exercised
    _agrees(model, tok)


def test_labels_sharing_a_prefix_run_it_once() -> None:
    from whetstone.models.label_scoring import LabelTrie

    # Answers' tokens, end of turn (9) included: the first two share [1, 2].
    trie = LabelTrie.of([[1, 2, 3, 9], [1, 2, 4, 9], [5, 9], [7]])
    assert trie.tokens == [1, 2, 3, 4, 5]
    assert trie.depths == [0, 1, 2, 2, 0]
    assert trie.ancestors == [[0], [0, 1], [0, 1, 2], [0, 1, 3], [4]]
    assert trie.paths == [[0, 1, 2], [0, 1, 3], [4], []]


@pytest.mark.parametrize(
    "layers", [["sliding_attention"] * 2, ["sliding_attention", "full_attention"]]
)
def test_scores_agree_under_a_sliding_window(
    tiny: tuple[Any, Any], tmp_path: Path, layers: list[str]
) -> None:
    """A model whose layers see only the last few positions (all of them, or some, as in
    Gemma) gets that window on the packed labels too: each label as if alone after its
    prompt, pads not counted."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    _, tok = tiny
    torch.manual_seed(1)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=6,
        max_window_layers=0,
        layer_types=layers,
        eos_token_id=tok.eos_token_id,
    )
    model = AutoModelForCausalLM.from_config(cfg).eval()
    _agrees(model, tok)


def test_scores_agree_for_a_lora_adapter(tiny_base_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serve_helpers import make_lora

    folder = make_lora(tiny_base_dir, tmp_path / "lora", seed=3)
    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    model = PeftModel.from_pretrained(base, folder).eval()
    _agrees(model, AutoTokenizer.from_pretrained(tiny_base_dir))


def test_predictor_answers_a_classify_task_from_its_labels(tiny: tuple[Any, Any]) -> None:
    from whetstone.predict import Predictor
    from whetstone.records import Task

    model, tok = tiny
    labels = ["positive", "negative", "neutral"]
    task = Task(name="sentiment", kind="classify", labels=labels)
    pred = Predictor(task=task, model=model, tokenizer=tok, name="tiny")
    gens = pred(INPUTS, batch_size=2, max_new_tokens=1)
    assert len(gens) == len(INPUTS)
    for g in gens:
        assert g.text in labels and g.label_probs is not None
        assert set(g.label_probs) == set(labels)
        assert g.confidence == pytest.approx(math.log(g.label_probs[g.text]))
        assert g.output_tokens == len(_ids(tok, g.text)) + 1
    # Labels a caller passes stand in for a task without declared labels.
    bare = Predictor(task=Task(name="s", kind="classify"), model=model, tokenizer=tok, name="t")
    assert {g.text for g in bare(INPUTS, labels=["yes", "no"])} <= {"yes", "no"}


@pytest.mark.parametrize("declared", [True, False])
def test_evaluating_a_classify_task_scores_labels(
    tmp_path: Path, tiny_base_dir: Path, declared: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from whetstone.evaluate.runner import evaluate

    labels = ["spam", "ham"]
    p = whetstone.init(str(tmp_path / "proj"), base_model=str(tiny_base_dir))
    try:
        p.create_task("mail", "classify", labels=labels)
        for i in range(8):
            p.capture("mail", f"message number {i}", reference=labels[i % 2], source="import")
        if not declared:
            # A task stored without labels (creating one now requires them): evaluation
            # takes the label set from the references.
            bare = p.task("mail").model_copy(update={"labels": None})
            monkeypatch.setattr(p, "task", lambda name: bare)
        ev = evaluate(p, "mail", "base", "all", max_new_tokens=1, resamples=50)
        assert ev.info["answered_by"] == "label_likelihood"
        assert ev.info["hit_budget"] == 0  # a label is never cut off by the decode budget
        assert {x.prediction for x in ev.predictions} <= set(labels)
        again = evaluate(p, "mail", "base", "all", max_new_tokens=1, resamples=50)
        assert again.reused and again.id == ev.id
    finally:
        p.close()


def test_no_labels_is_a_clear_error(tiny: tuple[Any, Any]) -> None:
    from whetstone.errors import InvalidInput

    model, tok = tiny
    with pytest.raises(InvalidInput, match="at least one label"):
        score_labels(model, tok, _chats(), [])
    assert score_labels(model, tok, [], ["a"]) == []
