"""Selection is not evaluation: the labelled examples that *choose* a checkpoint are carved from the train split.

Every choice made with labels (the task teacher's checkpoint in notebook 04, stage 2's checkpoints in notebook
05, any early stopping) reads a **selection split**; dev is scored once per final model, in notebook 06. With
``select_on``:

* ``train_holdout`` (default): a seeded share of the task's train split (``selection_fraction``, at most
  ``max_selection_examples``), whole groups (MultiRC questions), removed from the examples that train;
* ``dev``: the dev split (capped by ``max_eval_examples``), the paper's practice; its dev scores are then
  optimistic, and the report labels those models "dev-selected";
* ``last``: no selection; the last checkpoint is kept and no label chooses anything.

:func:`carve_selection` depends only on the examples' order and group keys, never on their labels: stage 2,
which reads its train inputs without labels, carves the same holdout from that label-free copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from glmd_lib.superglue.data import Example, read_split, subsample

SELECT_ON = ("train_holdout", "dev", "last")
SOURCES = {"train_holdout": "train holdout", "dev": "dev", "last": "none (last checkpoint)"}


def holdout_size(n_examples: int, fraction: float, cap: int | None) -> int:
    """How many examples the holdout takes: ``fraction`` of them, at most ``cap``, at least 1 (none of 0)."""
    if n_examples == 0:
        return 0
    n = max(1, round(n_examples * fraction))
    return min(n, cap) if cap is not None else n


def carve_selection(examples: Sequence[Example], fraction: float, cap: int | None,
                    seed: int) -> tuple[list[Example], list[Example]]:
    """``(rest, holdout)``: a seeded subset of whole groups (:func:`~glmd_lib.superglue.data.subsample`) held
    out, the rest in its original order. Refuses to leave nothing to train on."""
    held = subsample(list(examples), holdout_size(len(examples), fraction, cap), seed=seed)
    chosen = {id(ex) for ex in held}
    rest = [ex for ex in examples if id(ex) not in chosen]
    if examples and not rest:
        raise ValueError(f"the selection holdout ({len(held)} examples) would take the whole train split of "
                         f"{len(examples)}: lower selection_fraction / max_selection_examples, or select_on='last'")
    return rest, held


@dataclass
class SelectionSplit:
    """One task's labelled examples by use: ``train`` trains, ``selection`` chooses checkpoints (empty with
    ``select_on='last'``); ``source`` says where the selection examples came from."""

    select_on: str
    train: list[Example]
    selection: list[Example]

    @property
    def source(self) -> str:
        return SOURCES[self.select_on]

    def describe(self) -> dict[str, Any]:
        """What ``metrics.json`` records about it."""
        return {"select_on": self.select_on, "source": self.source, "train_examples": len(self.train),
                "selection_examples": len(self.selection)}


def selection_split(task: str, select_on: str, data_dir: str | Path | None = None, fraction: float = 0.1,
                    cap: int | None = None, seed: int = 0, max_dev: int | None = None) -> SelectionSplit:
    """The train split of ``task`` and its selection split (see the module docstring)."""
    if select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {SELECT_ON}, got {select_on!r}")
    train = read_split(task, "train", data_dir)
    if select_on == "train_holdout":
        rest, held = carve_selection(train, fraction, cap, seed)
        return SelectionSplit(select_on, rest, held)
    if select_on == "dev":
        return SelectionSplit(select_on, train, subsample(read_split(task, "val", data_dir), max_dev, seed=seed))
    return SelectionSplit(select_on, train, [])


def split_for(cfg: Any, task: str, data_dir: str | Path | None = None) -> SelectionSplit:
    """:func:`selection_split` with a stage config's settings (``select_on``, ``selection_fraction``,
    ``max_selection_examples``, ``seed``, ``max_eval_examples``)."""
    return selection_split(task, cfg.select_on, data_dir or cfg.superglue_dir, cfg.selection_fraction,
                           cfg.max_selection_examples, cfg.seed, getattr(cfg, "max_eval_examples", None))


# --------------------------------------------------------------------------------------------
# what labels touched, in words (the report states it from the stages' configs)
# --------------------------------------------------------------------------------------------

def stage_select_on(config: dict[str, Any]) -> str | None:
    """A stage config's ``select_on`` (a stage 2 from before it: ``select_by_dev`` True is dev, False last)."""
    if config.get("select_on"):
        return config["select_on"]
    if config.get("select_by_dev") is not None:
        return "dev" if config["select_by_dev"] else "last"
    return None


def _chose(select_on: str | None, config: dict[str, Any]) -> str:
    """"<who> chose their checkpoints" for one stage."""
    if select_on == "train_holdout":
        cap = config.get("max_selection_examples")
        share = f"{config.get('selection_fraction', 0.1):.0%} of the train split" + (f" (at most {cap} examples)"
                                                                                   if cap else "")
        return f"the labels of a holdout of {share}, removed from training, chose their checkpoints"
    if select_on == "dev":
        return "dev labels chose their checkpoints"
    if select_on == "last":
        return "no label chose their checkpoints (the last one was kept)"
    return "their config does not say what chose their checkpoints"


def labels_touched(teachers: dict[str, Any] | None, stage2: dict[str, Any] | None, gold: Sequence[str] = ()) -> str:
    """One paragraph: which labels trained, chose and scored which model, from the configs of notebooks 04
    and 05 (``None``: that stage has not run); ``gold``: the tasks whose students had gold labels in a loss."""
    t_sel, s_sel = stage_select_on(teachers or {}), stage_select_on(stage2 or {})
    text = ["**Which labels touched what.** Stage 1 learnt from unlabeled text only."]
    if teachers is not None:
        text.append(f"The task teachers (notebook 04) were trained on the gold labels of each task's train split; "
                    f"{_chose(t_sel, teachers)}.")
    if stage2 is not None:
        loss, outputs = stage2.get("task_loss"), "from their task teachers' outputs"
        how = (f"{outputs} on the tasks' inputs, no gold label entering a loss" if not gold else
               f"{outputs + ' and ' if loss != 'finetune' else ''}from the gold labels of the train inputs "
               f"(task_loss {loss}: {', '.join(gold)})")
        text.append(f"The students (notebook 05) learnt {how}; {_chose(s_sel, stage2)}.")
    dev = [who for who, sel in (("task teachers", t_sel), ("students", s_sel)) if sel == "dev"]
    if dev:
        text.append(f"Dev labels scored each final model once (notebook 06), and chose the checkpoints of the "
                    f"{' and the '.join(dev)}: their dev scores are optimistic, and marked *dev-selected*.")
    else:
        text.append("Dev labels only scored each final model, once (notebook 06).")
    return " ".join(text)
