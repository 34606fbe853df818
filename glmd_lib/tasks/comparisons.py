"""Every model's dev predictions (``eval/predictions.jsonl``) and paired differences between models
(``eval/differences.csv``).

Two models are compared on the *same* examples (notebook 06 scores every model, the majority baseline
included, on one set per task), by the paired bootstrap of :func:`glmd_lib.tasks.intervals.paired_difference`:
each resample rescores both, so what the two models share (hard examples, easy ones) cancels. A difference
whose interval contains 0 is "not distinguishable"; only the others say which model is better.

The predictions file keeps, per model, task and example, the example's id, resampling unit (``group``),
gold label, prediction and choice scores, so any other pair can be compared later without the models
(:func:`read_predictions` gives back what :func:`paired_difference` needs).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from glmd_lib.artifacts import artifact, atomic_write_text
from glmd_lib.superglue.data import Example
from glmd_lib.tasks.intervals import N_BOOT, paired_difference

# (A, B) pairs of notebook 06's model names: what distillation keeps, what it adds over guessing, what
# fine-tuning adds over prompting
PAIRS = (("student", "teacher"), ("student", "majority"), ("teacher", "zero_shot"))
DIFF_COLUMNS = ["task", "model_a", "model_b", "difference", "ci_low", "ci_high", "n_examples", "verdict"]


def _json_value(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_json_value(x) for x in v]
    return v


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def prediction_records(details: dict) -> list[dict[str, Any]]:
    """One record per (model, task, example) of ``details`` (as :func:`~glmd_lib.tasks.evaluate.run_eval` keeps them)."""
    records = []
    for (model, task), d in details.items():
        scores = d.get("scores")
        for i, (ex, pred) in enumerate(zip(d["examples"], d["predictions"])):
            rec = {"model": model, "task": task, "idx": _json_value(ex.idx), "group": _json_value(ex.group_key),
                   "label": ex.label, "prediction": pred, "pattern_id": d.get("pattern_id")}
            if scores is not None:
                rec["scores"] = [float(x) if math.isfinite(float(x)) else None for x in scores[i].tolist()]
            records.append(rec)
    return records


def write_predictions(details: dict, run_dir: str | Path) -> Path:
    """``eval/predictions.jsonl`` (atomically)."""
    lines = (json.dumps(r, allow_nan=False) for r in prediction_records(details))
    return atomic_write_text(artifact(run_dir, "eval", "predictions.jsonl"), "\n".join(lines) + "\n")


def read_predictions(path: str | Path) -> dict[tuple[str, str], dict[str, list]]:
    """``{(model, task): {"examples", "predictions"}}`` from a predictions file; the examples carry what the
    metrics and the resampling read (id, group, label)."""
    out: dict[tuple[str, str], dict[str, list]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        d = out.setdefault((r["model"], r["task"]), {"examples": [], "predictions": []})
        d["examples"].append(Example(r["task"], _hashable(r["idx"]), r["label"], {}, group=_hashable(r["group"])))
        d["predictions"].append(r["prediction"])
    return out


def constant_predictions(details: dict) -> list[str]:
    """One sentence per (model, task) whose predictions on more than one example are all the same answer (the
    majority baseline's are by construction and are left out): such a score says nothing about the task, whatever
    its interval, and a student that copies a constant teacher has high fidelity for the same reason."""
    notes = []
    for (model, task), d in details.items():
        answers = {json.dumps(p, sort_keys=True) for p in d["predictions"]}
        if model != "majority" and len(d["predictions"]) > 1 and len(answers) == 1:
            notes.append(f"{model} answers {d['predictions'][0]!r} for all {len(d['predictions'])} {task} examples")
    return notes


def differences(details: dict, n_boot: int = N_BOOT, seed: int = 0,
                pairs: tuple[tuple[str, str], ...] = PAIRS) -> pd.DataFrame:
    """Paired bootstrap of score(A) - score(B) for every pair in ``pairs`` and task both were scored on."""
    tasks = list(dict.fromkeys(task for _, task in details))
    rows = []
    for a, b in pairs:
        for task in tasks:
            da, db = details.get((a, task)), details.get((b, task))
            if da is None or db is None:
                continue
            if [ex.idx for ex in da["examples"]] != [ex.idx for ex in db["examples"]]:
                raise ValueError(f"{task}: {a} and {b} were scored on different examples; a paired difference "
                                 f"needs the same ones")
            iv = paired_difference(task, da["predictions"], db["predictions"], da["examples"], n_boot, seed)
            rows.append({"task": task, "model_a": a, "model_b": b, "difference": iv.value, "ci_low": iv.low,
                         "ci_high": iv.high, "n_examples": len(da["examples"]), "verdict": iv.verdict()})
    return pd.DataFrame(rows, columns=DIFF_COLUMNS)


def verdict_text(row: Any) -> str:
    """A verdict with the models' names ("student better"), for tables meant to be read."""
    return {"A better": f"{row.model_a} better", "B better": f"{row.model_b} better"}.get(row.verdict, row.verdict)
