"""Peer check: Whetstone's exact match agrees with lm-evaluation-harness on the same model
and the same records.

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

Run:  python benchmarks/lm_eval_agreement.py      (about two minutes on two CPU cores)
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


def run(workdir: Path | None = None) -> dict[str, Any]:
    """Run both and return the numbers and per-record answers."""
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


def agrees(result: dict[str, Any]) -> bool:
    """Equal, or one record apart; and a number that says something (not all 0 or all 1)."""
    informative = 0 < result["whetstone_exact_match"] < 1
    return informative and result["records_apart"] <= 1


def main() -> int:
    result = run()
    print(json.dumps(result, indent=2, ensure_ascii=False))
    agree = agrees(result)
    print("AGREE" if agree else "DISAGREE", file=sys.stderr)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
