#!/usr/bin/env python
"""Build Whetstone's bundled classification demo data, `intents.jsonl`, from the SNIPS voice
assistant utterances in the `bigbench` source distribution
(bigbench/benchmark_tasks/intent_recognition/task.json; BIG-bench is Apache 2.0).

`pip download bigbench` fails (its metadata names bleurt by a file URL, which pip refuses for
PyPI packages), so fetch the 358 MB sdist from its PyPI files page
(https://pypi.org/project/bigbench/1.0.0/#files) and point the script at it:

    python scripts/convert_intents.py --sdist /tmp/bigbench/bigbench-1.0.0.tar.gz

Beside the JSONL file it writes `NOTICE-intents.txt`: the data's origin and licence.

Each example becomes one row `{"id", "input", "reference"}`:
- input: the utterance, without BIG-bench's "Utterance: " prefix. The utterances are one
  sentence each (at most ~130 characters), so nothing is cut.
- reference: the one intent whose target score is 1, a snake_case label (add_to_playlist,
  book_restaurant, ...). An example with no or several such intents stops the conversion.
- Exact duplicate utterances are kept once, at their first position (there are none in 1.0.0).
- id: `intents-NNN`, NNN being the 1-based position of the example in task.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

SDIST_VERSION = "1.0.0"
TASK_JSON = "bigbench/benchmark_tasks/intent_recognition/task.json"
PREFIX = "Utterance: "
DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "whetstone" / "data"
DEFAULT_OUT = DATA_DIR / "intents.jsonl"
APACHE = Path("/usr/share/common-licenses/Apache-2.0")

NOTICE = """\
intents.jsonl is derived from {task_json}
in the source distribution of bigbench {version} (https://pypi.org/project/bigbench/{version}/, https://github.com/google/BIG-bench),
converted by scripts/convert_intents.py: the "Utterance: " prefix is dropped and each
example's one correct intent becomes its reference. BIG-bench took the utterances from the
SNIPS NLU benchmark (https://github.com/sonos/nlu-benchmark, 2017-06-custom-intent-engines),
crowd-sourced by Snips.

BIG-bench is distributed under the Apache License, Version 2.0 (its setup.py: "Licensed under
the Apache License, Version 2.0"; https://www.apache.org/licenses/LICENSE-2.0). Copyright
questions about BIG-bench go to big-bench-copyright@google.com.

BIG-bench asks that its benchmark data stay out of the corpora language models are
pre-trained on, and marks each task with a canary string so such corpora can filter it out.
This task's canary, kept here for that purpose:
{canary}

The Apache License, Version 2.0, follows.

{licence}"""


def find_task_json(sdist: Path) -> dict[str, Any]:
    """task.json from a bigbench sdist (.tar.gz), or from a folder holding one or its
    unpacked tree."""
    if sdist.is_dir():
        tarballs = sorted(sdist.glob("bigbench-*.tar.gz"))
        if tarballs:
            sdist = tarballs[-1]
        else:
            found = sorted(sdist.rglob(TASK_JSON))
            if not found:
                sys.exit(f"{sdist}: no bigbench-*.tar.gz and no {TASK_JSON} under it")
            return json.loads(found[0].read_text(encoding="utf-8"))
    with tarfile.open(sdist) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("/" + TASK_JSON)), None)
        if member is None:
            sys.exit(f"{sdist}: no {TASK_JSON} inside")
        f = tar.extractfile(member)
        assert f is not None
        return json.loads(f.read().decode("utf-8"))


def convert(task: dict[str, Any]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for n, ex in enumerate(task["examples"], 1):
        text = str(ex["input"]).removeprefix(PREFIX).strip()
        right = [label for label, score in ex["target_scores"].items() if score == 1]
        if len(right) != 1:
            sys.exit(f"{TASK_JSON}: example {n} has {len(right)} correct intents, not one")
        if not text or text in seen:
            continue
        seen.add(text)
        rows.append({"id": f"intents-{n:03d}", "input": text, "reference": right[0]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sdist", type=Path, required=True, help="bigbench sdist or its folder")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    task = find_task_json(args.sdist)
    rows = convert(task)
    args.out.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    notice = NOTICE.format(
        task_json=TASK_JSON,
        version=SDIST_VERSION,
        canary=task.get("canary", ""),
        licence=APACHE.read_text(encoding="utf-8") if APACHE.exists() else "(see the URL above)",
    )
    (args.out.parent / "NOTICE-intents.txt").write_text(notice, encoding="utf-8")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["reference"]] = counts.get(r["reference"], 0) + 1
    print(f"wrote {len(rows)} rows to {args.out}: {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
