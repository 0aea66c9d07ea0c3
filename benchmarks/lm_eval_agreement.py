"""Peer check: Whetstone agrees with lm-evaluation-harness on the same model and the same
records, in two parts: exact match of generated answers, and classify answered by label
likelihood against lm-eval's `multiple_choice`.

Generate part (`run_generate`)

Both sides run the bundled base model greedily with the same system prompt, the model's chat
template, the same token budget and the same stop (the end-of-turn token), over the same 20
question/answer records. lm-eval gets them as a local `generate_until` task (YAML + JSONL in a
temp folder) scored by its built-in `exact_match`.

The two exact-match definitions are not letter-for-letter the same, so the check allows one
record of disagreement:
- Whetstone uses SQuAD normalisation (lower case, drop punctuation, drop articles, collapse
  whitespace). lm-eval's `exact_match` applies `regexes_to_ignore` *before* lower-casing and
  punctuation removal, and can only delete text, not collapse it; the closest configuration
  deletes articles case-insensitively and deletes all whitespace. They differ only on answers
  that differ by inner spacing ("new york" vs "newyork") or where punctuation glues an article
  ("the-end"), which one-word answers here do not produce.
- Whetstone generates in left-padded batches, lm-eval here one request at a time; padding can
  move a float32 logit in the last bits and, rarely, flip a greedy token.
The per-record raw answers are compared too, and reported.

Multiple-choice part (`run_multiple_choice`)
A classify task is answered by label likelihood (`whetstone.models.label_scoring`): each
label scored as the tokens of the assistant turn the model is taught, the most likely label
chosen. That is how lm-eval scores `multiple_choice`: here the same 20 sentiment records go to
Whetstone as a classify task (instruction = the system prompt naming the labels) evaluated on
the base model, and to lm-eval as a local task with `doc_to_choice` = the labels,
`doc_to_target` = the gold index, the chat template and the same system prompt, and
`target_delimiter: ""`, so each continuation starts right after the assistant header, where
Whetstone's answer starts. Compared: the label each side chooses per record, and accuracy
(lm-eval's `acc`, argmax of the summed log-likelihoods, first wins a tie, like Whetstone).
Known differences, the reason one record of disagreement is allowed:
- Whetstone's label sequence ends with the end-of-turn token (`<|im_end|>`), lm-eval's
  continuation does not, so Whetstone's score for a label also counts the model's wish to stop
  right after it. Where the model would rather go on after one label (a "." or more words)
  than after another, and the labels are otherwise close, the two can choose differently.
  The labels here are single common words, none a prefix of another, which the model
  mostly ends its answer with, so this is rare (it matters most when one label is a prefix
  of another, which Whetstone then tells apart and lm-eval cannot).
- lm-eval moves the context's trailing whitespace (the "\\n" after "assistant") into each
  continuation, so its log-likelihoods include log P("\\n" | ...assistant) - the same term
  for every choice, which shifts them all alike and never changes the choice.
- Padding in Whetstone's batches, as in the generate part.

Run:  python benchmarks/lm_eval_agreement.py      (about three minutes on two CPU cores)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

SYSTEM = "Answer the question with one word only."
MAX_NEW_TOKENS = 24
STOP = "<|im_end|>"  # SmolLM2's end-of-turn token: where Whetstone's generation stops too

# Half the references are phrased the way this model answers (a short sentence), half are the
# one word the system prompt asks for, so the exact-match number is neither 0 nor 1 and the
# normalisations (case, punctuation, articles) are exercised on both sides.
RECORDS = [
    ("What is the capital of France?", "the capital of France is Paris"),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Japan?", "The Capital of Japan is Tokyo"),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Spain?", "Madrid"),
    ("What colour is the sky on a clear day?", "Blue"),
    ("What colour is grass?", "Green"),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What is the opposite of up?", "the opposite of up is down"),
    ("How many legs does a spider have?", "Eight"),
    ("What animal says moo?", "Cow"),
    ("What animal barks?", "Dog"),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("Which planet do we live on?", "Earth"),
    ("What is the largest ocean on Earth?", "The largest ocean on Earth is the Pacific Ocean."),
    ("What is the first letter of the English alphabet?", "A"),
    ("What do bees make?", "Honey"),
    ("What is the plural of mouse?", "The plural of mouse is mice."),
    ("What gas do humans need to breathe?", "Oxygen"),
    ("In which season does snow usually fall?", "Winter"),
]

TASK_YAML = """\
task: whetstone_peer
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
generation_kwargs:
  until: ["{stop}"]
  do_sample: false
  max_gen_toks: {max_tokens}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
    regexes_to_ignore: ["(?i)\\\\b(?:a|an|the)\\\\b", "\\\\s+"]
"""

# Multiple-choice part. Single common words, none a prefix of another (see the module doc).
LABELS = ["positive", "negative", "neutral"]
MC_SYSTEM = (
    "Classify the sentiment of the text. Answer with exactly one of these labels: "
    + ", ".join(LABELS)
    + "."
)
# Plain cases next to negation, sarcasm, mixed feelings and flat facts (which a small model
# tends to call positive or negative), so accuracy is neither 0 nor 1.
MC_RECORDS = [
    ("I absolutely loved this movie, it was wonderful!", "positive"),
    ("The food was delicious and the staff were very friendly.", "positive"),
    ("What a fantastic day, everything went perfectly.", "positive"),
    ("Not bad at all, I would happily go back.", "positive"),
    ("I can't complain, the hotel exceeded my expectations.", "positive"),
    ("Thank you so much, you made my week!", "positive"),
    ("This was the worst purchase I have ever made.", "negative"),
    ("The service was slow and the room was dirty.", "negative"),
    ("I hate waiting in long lines.", "negative"),
    ("Oh great, my flight got cancelled again.", "negative"),
    ("The phone looks beautiful but it stopped working after two days.", "negative"),
    ("I expected much more from such a famous restaurant.", "negative"),
    ("The update deleted all my photos.", "negative"),
    ("The store opens at nine in the morning.", "neutral"),
    ("The meeting has been moved to Tuesday.", "neutral"),
    ("The book has three hundred pages.", "neutral"),
    ("It is raining in London today.", "neutral"),
    ("The package was delivered on Monday.", "neutral"),
    ("She works as a nurse at the local hospital.", "neutral"),
    ("The train leaves from platform four.", "neutral"),
]

MC_TASK_YAML = """\
task: whetstone_peer_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{text}}}}"
doc_to_choice: {choices}
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def run_whetstone(workdir: Path) -> tuple[float, list[str]]:
    import whetstone
    from whetstone import snapshots
    from whetstone.evaluate.runner import evaluate

    p = whetstone.init(str(workdir / "project"))
    try:
        p.create_task("peer", "generate", instruction=SYSTEM)
        ids = [p.capture("peer", q, reference=a, source="import") for q, a in RECORDS]
        snap = snapshots.freeze(p, "peer", dict.fromkeys(ids, "test"))
        ev = evaluate(p, "peer", "base", "test", snap.id, max_new_tokens=MAX_NEW_TOKENS)
        by_id = {pr.record_id: pr.prediction for pr in ev.predictions}
        return ev.metrics["exact_match"]["value"], [by_id[i] for i in ids]
    finally:
        p.close()


def run_lm_eval(workdir: Path, model_path: str) -> tuple[float, list[str], list[str]]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_dir = workdir / "lm_eval_task"
    task_dir.mkdir()
    data = task_dir / "records.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in RECORDS))
    (task_dir / "whetstone_peer.yaml").write_text(
        TASK_YAML.format(data=data, stop=STOP, max_tokens=MAX_NEW_TOKENS)
    )
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_path},dtype=float32",
        tasks=["whetstone_peer"],
        task_manager=TaskManager(include_path=str(task_dir)),
        apply_chat_template=True,
        system_instruction=SYSTEM,
        num_fewshot=0,
        batch_size=1,
        device="cpu",
        log_samples=True,
    )
    assert out is not None
    score = float(out["results"]["whetstone_peer"]["exact_match,none"])
    samples = sorted(out["samples"]["whetstone_peer"], key=lambda s: s["doc_id"])
    answers = [s["filtered_resps"][0].strip() for s in samples]
    prompts = [
        s["arguments"][0][0]
        if isinstance(s["arguments"][0], list | tuple)
        else s["arguments"]["gen_args_0"]["arg_0"]
        for s in samples
    ]
    return score, answers, prompts


def run_generate(workdir: Path | None = None) -> dict[str, Any]:
    """The generate part: both sides' exact match and per-record answers."""
    from whetstone.models import base

    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(workdir or tmp)
        ws_score, ws_answers = run_whetstone(wd)
        lm_score, lm_answers, prompts = run_lm_eval(wd, base.resolve(None).path)
    same = [a == b for a, b in zip(ws_answers, lm_answers, strict=True)]
    return {
        "n": len(RECORDS),
        "whetstone_exact_match": ws_score,
        "lm_eval_exact_match": lm_score,
        "records_apart": round(abs(ws_score - lm_score) * len(RECORDS)),
        "same_answers": sum(same),
        "differences": [
            {"question": q, "whetstone": a, "lm_eval": b}
            for (q, _), a, b, s in zip(RECORDS, ws_answers, lm_answers, same, strict=True)
            if not s
        ],
        "lm_eval_prompt_example": prompts[0],
    }


def run_whetstone_mc(workdir: Path) -> tuple[float, list[str], str]:
    """Whetstone's accuracy, chosen labels (record order) and how it answered."""
    import whetstone
    from whetstone import snapshots
    from whetstone.evaluate.runner import evaluate

    p = whetstone.init(str(workdir / "mc_project"))
    try:
        p.create_task("peer_mc", "classify", instruction=MC_SYSTEM, labels=LABELS)
        ids = [p.capture("peer_mc", t, reference=y, source="import") for t, y in MC_RECORDS]
        snap = snapshots.freeze(p, "peer_mc", dict.fromkeys(ids, "test"))
        ev = evaluate(p, "peer_mc", "base", "test", snap.id)
        by_id = {pr.record_id: pr.prediction for pr in ev.predictions}
        answered_by = str(ev.info.get("answered_by"))
        return ev.metrics["accuracy"]["value"], [by_id[i] for i in ids], answered_by
    finally:
        p.close()


def run_lm_eval_mc(
    workdir: Path, model_path: str
) -> tuple[float, list[str], list[list[float]], str]:
    """lm-eval's `acc`, chosen labels, per-label log-likelihoods and one request, shown."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_dir = workdir / "lm_eval_mc_task"
    task_dir.mkdir()
    data = task_dir / "records.jsonl"
    data.write_text(
        "".join(json.dumps({"text": t, "label": LABELS.index(y)}) + "\n" for t, y in MC_RECORDS)
    )
    (task_dir / "whetstone_peer_mc.yaml").write_text(
        MC_TASK_YAML.format(data=data, choices=json.dumps(LABELS))
    )
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_path},dtype=float32",
        tasks=["whetstone_peer_mc"],
        task_manager=TaskManager(include_path=str(task_dir)),
        apply_chat_template=True,
        system_instruction=MC_SYSTEM,
        num_fewshot=0,
        batch_size=1,
        device="cpu",
        log_samples=True,
    )
    assert out is not None
    acc = float(out["results"]["whetstone_peer_mc"]["acc,none"])
    samples = sorted(out["samples"]["whetstone_peer_mc"], key=lambda s: s["doc_id"])
    # One (log-likelihood, is-greedy) pair per choice, in label order.
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    # The first maximum, as lm-eval's np.argmax picks it.
    chosen = [LABELS[max(range(len(row)), key=lambda j: row[j])] for row in lls]
    # The first choice's (context, continuation), however this lm-eval version logs it.
    args = samples[0]["arguments"]
    return acc, chosen, lls, repr(args[0] if isinstance(args, list | tuple) else args)


def whetstone_lls_without_end(model_path: str) -> list[list[float]]:
    """Whetstone's label log-likelihoods scored as lm-eval scores a choice (the label's tokens,
    no end-of-turn token): the like-for-like comparison of the two scorers."""
    import torch

    from whetstone.models import base
    from whetstone.models.label_scoring import score_labels
    from whetstone.records import to_messages

    model, tok = base.load(base.resolve(model_path), dtype=torch.float32)
    chats = [to_messages(t, MC_SYSTEM) for t, _ in MC_RECORDS]
    scores = score_labels(model, tok, chats, LABELS, end_of_turn=False)
    return [[s.log_likelihoods[y] for y in LABELS] for s in scores]


def run_multiple_choice(workdir: Path | None = None) -> dict[str, Any]:
    """The multiple-choice part: both sides' accuracy and chosen label per record, as each
    scores by default, and like-for-like (Whetstone without its end-of-turn token)."""
    from whetstone.models import base

    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(workdir or tmp)
        ws_acc, ws_labels, answered_by = run_whetstone_mc(wd)
        lm_acc, lm_labels, lm_lls, request = run_lm_eval_mc(wd, base.resolve(None).path)
    plain = whetstone_lls_without_end(base.resolve(None).path)
    plain_labels = [LABELS[max(range(len(row)), key=lambda j: row[j])] for row in plain]
    same = [a == b for a, b in zip(ws_labels, lm_labels, strict=True)]
    return {
        "like_for_like": {
            "same_labels": sum(a == b for a, b in zip(plain_labels, lm_labels, strict=True)),
            "max_abs_log_likelihood_difference": max(
                abs(a - b)
                for r1, r2 in zip(plain, lm_lls, strict=True)
                for a, b in zip(r1, r2, strict=True)
            ),
        },
        "n": len(MC_RECORDS),
        "whetstone_answered_by": answered_by,
        "whetstone_accuracy": ws_acc,
        "lm_eval_accuracy": lm_acc,
        "same_labels": sum(same),
        "records_apart": len(same) - sum(same),
        # How often each side picks each label: a model that picks one label for every record
        # would agree trivially; this shows it does not.
        "whetstone_chosen": {y: ws_labels.count(y) for y in LABELS},
        "lm_eval_chosen": {y: lm_labels.count(y) for y in LABELS},
        "differences": [
            {
                "text": t,
                "gold": y,
                "whetstone": a,
                "lm_eval": b,
                "lm_eval_log_likelihoods": dict(zip(LABELS, row, strict=True)),
            }
            for (t, y), a, b, row, s in zip(
                MC_RECORDS, ws_labels, lm_labels, lm_lls, same, strict=True
            )
            if not s
        ],
        "lm_eval_request_example": request,
    }


def run(workdir: Path | None = None) -> dict[str, Any]:
    """Run both parts: the generate part's keys, and the multiple-choice part's under
    "multiple_choice"."""
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(workdir or tmp)
        result = run_generate(wd)
        result["multiple_choice"] = run_multiple_choice(wd)
    return result


def agrees_generate(result: dict[str, Any]) -> bool:
    """Equal, or one record apart; and a number that says something (not all 0 or all 1)."""
    informative = 0 < result["whetstone_exact_match"] < 1
    return informative and result["records_apart"] <= 1


def agrees_multiple_choice(mc: dict[str, Any]) -> bool:
    """Answered by label likelihood; at most one record choosing differently; accuracies that
    match those choices (so one record apart at most) and say something (not 0 or 1)."""
    informative = 0 < mc["whetstone_accuracy"] < 1
    acc_apart = round(abs(mc["whetstone_accuracy"] - mc["lm_eval_accuracy"]) * mc["n"])
    return (
        mc["whetstone_answered_by"] == "label_likelihood"
        and informative
        and mc["records_apart"] <= 1
        and acc_apart <= mc["records_apart"]
    )


def agrees_like_for_like(mc: dict[str, Any]) -> bool:
    """Scored the same way (no end-of-turn token), every label and log-likelihood matches."""
    same = mc["like_for_like"]
    return same["same_labels"] == mc["n"] and same["max_abs_log_likelihood_difference"] < 1e-3


def agrees(result: dict[str, Any]) -> bool:
    """Both parts agree (see `agrees_generate`, `agrees_multiple_choice`)."""
    return agrees_generate(result) and agrees_multiple_choice(result["multiple_choice"])


def main() -> int:
    result = run()
    print(json.dumps(result, indent=2, ensure_ascii=False))
    agree = agrees(result)
    print("AGREE" if agree else "DISAGREE", file=sys.stderr)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
