"""SuperGLUE leaderboard submission files: one ``<Task>.jsonl`` per task, in the format the leaderboard reads.

The leaderboard wants ``{"idx", "label"}`` records with booleans written as ``"true"``/``"false"`` and MultiRC
nested per paragraph and question; the file names are fixed (``AX-b.jsonl`` ...). Zip the folder to submit.
The predictions come from :func:`glmd_lib.tasks.evaluate.write_test_predictions` (notebook 06,
``write_test_predictions=True``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from glmd_lib.artifacts import atomic_write_text
from glmd_lib.superglue.data import Example

SUBMISSION_NAMES = {"BoolQ": "BoolQ", "CB": "CB", "COPA": "COPA", "MultiRC": "MultiRC", "ReCoRD": "ReCoRD",
                    "RTE": "RTE", "WiC": "WiC", "WSC": "WSC", "AX-b": "AX-b", "AX-g": "AX-g"}


def submission_lines(task: str, examples: Sequence[Example], predictions: Sequence[Any]) -> list[dict]:
    """Records in the leaderboard's format: ``{"idx", "label"}``, booleans as "true"/"false",
    MultiRC nested per paragraph and question."""
    if task == "MultiRC":
        paras: dict[int, dict[int, list]] = {}
        for ex, p in zip(examples, predictions):
            pi, qi, ai = ex.idx
            paras.setdefault(pi, {}).setdefault(qi, []).append({"idx": ai, "label": int(p)})
        return [{"idx": pi, "passage": {"questions": [{"idx": qi, "answers": ans} for qi, ans in qs.items()]}}
                for pi, qs in paras.items()]
    out = []
    for ex, p in zip(examples, predictions):
        label = str(p).lower() if isinstance(p, bool) else p
        out.append({"idx": ex.idx, "label": label})
    return out


def write_submission(task: str, examples: Sequence[Example], predictions: Sequence[Any],
                     out_dir: str | Path) -> Path:
    """``<out_dir>/<Task>.jsonl`` for the leaderboard (written atomically)."""
    lines = submission_lines(task, examples, predictions)
    return atomic_write_text(Path(out_dir) / f"{SUBMISSION_NAMES[task]}.jsonl",
                             "\n".join(json.dumps(r) for r in lines) + "\n")
