"""Tiny SuperGLUE files in the official layout and format, for tests and offline demos of the readers.

``write_toy_dataset(root)`` writes a few records per task and split that exercise every reader path (labels
of every kind, MultiRC answers, ReCoRD entities, AX-g pairs, AX-b's string idx, test files without labels
or final newline). The texts are nonsense: these files test plumbing, not models.
"""
from __future__ import annotations

import json
from pathlib import Path

from glmd_lib.superglue.data import LABELS, TASKS, task_path, task_splits


def _toy_records(task: str, split: str, n: int) -> list[dict]:
    lab = split != "test"
    recs: list[dict] = []
    for i in range(n):
        if task == "BoolQ":
            r = {"question": f"is the sky blue number {i}", "passage": "Sky -- The sky is blue on clear days.", "idx": i}
            if lab:
                r["label"] = i % 3 != 0
        elif task in ("CB", "RTE"):
            r = {"premise": f"The cat sat on mat {i}.", "hypothesis": "The cat sat", "idx": i}
            if lab:
                r["label"] = (LABELS[task] * 3)[i % (3 if task == "CB" else 2)]
        elif task == "COPA":
            r = {"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
                 "choice2": "Water flowed from the spout.", "question": "effect" if i % 2 else "cause", "idx": i}
            if lab:
                r["label"] = i % 2
        elif task == "WiC":
            r = {"word": "class", "sentence1": "An emerging professional class.", "sentence2": "He showed real class.",
                 "idx": i, "start1": 25, "start2": 17, "end1": 30, "end2": 22, "version": 1.1}
            if lab:
                r["label"] = bool(i % 2)
        elif task == "WSC":
            r = {"text": "Mark told Pete many lies about himself. He should have been more skeptical.",
                 "target": {"span1_text": "Pete" if i % 2 else "Mark", "span1_index": 2 if i % 2 else 0,
                            "span2_text": "He", "span2_index": 7}, "idx": i}
            if lab:
                r["label"] = bool(i % 2)
        elif task == "MultiRC":
            answers = [{"text": t, "idx": 2 * i + k} for k, t in enumerate(["Paris", "Rome"])]
            if lab:
                answers[0]["label"], answers[1]["label"] = 1, 0
            r = {"idx": i, "version": 1.1, "passage": {"text": "The capital of France is Paris.",
                                                        "questions": [{"question": "What is the capital of France?",
                                                                       "idx": i, "answers": answers}]}}
        elif task == "ReCoRD":
            text = "Paris and Rome are capitals.\n@highlight\nParis is in France"
            qa = {"query": "@placeholder is in France.", "idx": i}
            if lab:
                qa["answers"] = [{"start": 0, "end": 4, "text": "Paris"}]
            r = {"source": "toy", "idx": i, "passage": {"text": text, "entities": [
                {"start": 0, "end": 4}, {"start": 10, "end": 13}, {"start": 40, "end": 44}]}, "qas": [qa]}
        elif task == "AX-b":
            r = {"idx": str(i), "label": LABELS["RTE"][i % 2], "sentence1": f"The cat sat on mat {i}.",
                 "sentence2": "The cat did not sit.", "logic": "Negation"}
        elif task == "AX-g":
            r = {"premise": f"The taxpayer met the accountant about {'his' if i % 2 == 0 else 'her'} taxes.",
                 "hypothesis": "The accountant sought help.", "idx": i, "label": LABELS["RTE"][(i // 2) % 2],
                 "pair_id": 1000 + i}
        recs.append(r)
    return recs


def write_toy_dataset(root: str | Path, n: int = 6, tasks=TASKS) -> Path:
    """Write ``n`` small records per task/split in the official layout and format (no final newline,
    like the official test files) under ``root``; return ``root``."""
    root = Path(root)
    for task in tasks:
        for split in task_splits(task):
            path = task_path(task, split, root)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(json.dumps(r) for r in _toy_records(task, split, n)), encoding="utf-8")
    return root
