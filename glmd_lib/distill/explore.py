"""Notebooks 03 and 05's next-word explorer: teacher and student side by side on a prompt the reader types.

The comparison is over the student's kept vocabulary with the teacher's distribution built exactly as
training builds its target (:meth:`~glmd_lib.vocab.vocab_map.VocabMap.target_logits`: renormalised over the
kept tokens, or with each pruned token's probability added to its substitute's), so the KL shown is the
quantity the stage-1 loss drives down (without the loss's T² factor), at the temperature of the slider.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from glmd_lib.artifacts import artifact
from glmd_lib.distill.task_inputs import cloze_settings, read_inputs, teacher_dir
from glmd_lib.explore import explorer
from glmd_lib.models.student import Student, load_student
from glmd_lib.models.teacher import load_teacher
from glmd_lib.superglue.patterns import PATTERNS


@torch.no_grad()
def next_logits(view: Student, prompt: str) -> torch.Tensor:
    """``[rows]`` float logits of the word after ``prompt`` (a masked LM reads it at a mask placed after the
    prompt, as its cloze training does), over ``view``'s rows, on the CPU."""
    tok = view.tokenizer
    causal = view.kind == "causal"
    enc = tok(prompt if causal else f"{prompt} {tok.mask_token}", return_tensors="pt", add_special_tokens=not causal)
    ids = enc["input_ids"]
    pos = -1 if causal else int((ids[0] == tok.mask_token_id).nonzero()[-1])
    rows = view.vocab_map.map_ids(ids).to(view.device)
    out = view.model(input_ids=rows, attention_mask=enc["attention_mask"].to(view.device)).logits
    return out[0, pos].float().cpu()


def next_word_comparison(teacher: Student, student: Student, prompt: str, temperature: float = 1.0,
                         k: int = 10) -> tuple[pd.DataFrame, float]:
    """The ``k`` likeliest next tokens of the teacher and of the student at ``temperature`` (each with the
    other model's probability of the same token), and KL(teacher ‖ student) over the kept vocabulary.

    ``teacher`` is a :class:`Student` over the full vocabulary (``Student(teacher_model, tokenizer)``); its
    distribution is restricted with ``student.vocab_map`` as the training target is."""
    vm = student.vocab_map
    z = next_logits(teacher, prompt)
    log_p = torch.log_softmax(vm.target_logits(z[None], temperature)[0].float() / temperature, -1)
    log_q = torch.log_softmax(next_logits(student, prompt) / temperature, -1)
    kl = float((log_p.exp() * (log_p - log_q)).sum())
    p, q = log_p.exp(), log_q.exp()
    k = min(k, p.numel())
    word = lambda row: repr(student.tokenizer.decode([int(vm.kept_ids[row])]))  # noqa: E731
    t_top, s_top = p.topk(k).indices.tolist(), q.topk(k).indices.tolist()
    table = pd.DataFrame({"teacher": [word(r) for r in t_top], "p teacher": p[t_top].numpy(),
                          "p student (same token)": q[t_top].numpy(),
                          "student": [word(r) for r in s_top], "p student": q[s_top].numpy(),
                          "p teacher (same token)": p[s_top].numpy()},
                         index=pd.RangeIndex(1, k + 1, name="rank"))
    return table, kl


def _shown(text: str, width: int) -> str:
    """``text`` on one line (a line break as ⏎, not a literal ``\\n``), at most its last ``width`` characters,
    from the start of a word, after "…" (the end of a prompt is what the next word follows)."""
    text = text.replace("\n", " ⏎ ")
    if len(text) <= width:
        return text
    tail = text[-width:]
    cut = tail.find(" ")
    return "…" + (tail[cut + 1:] if 0 <= cut < len(tail) - 1 else tail)


def _render(pair: tuple[Student, Student], prompt: str, temperature: float, k: int) -> list[Any]:
    table, kl = next_word_comparison(*pair, prompt, temperature, k)
    return [f"prompt “{html.escape(_shown(prompt, 200))}”: KL(teacher ‖ student) at T = {temperature:.2f}: "
            f"<b>{kl:.4f}</b>", table]


def next_word_explorer(pair_for: Callable[[str | None], tuple[Student, Student]],
                       prompts: Sequence[tuple[str, str | None]], temperature: float = 1.0, k: int = 10):
    """Pick a prompt (or type one) and a temperature: the two next-word distributions and their KL.

    ``prompts``: ``(prompt, task)`` pairs offered in the drop-down (``task`` None in notebook 03);
    ``pair_for(task)`` gives ``(teacher, student)`` for that task. Headless: the first prompt at
    ``temperature``."""
    import ipywidgets as widgets

    wide = widgets.Layout(width="90%")
    labels = [f"{t + ': ' if t else ''}{_shown(p, 70)}" for p, t in prompts]
    pick = widgets.Dropdown(options=[(label, i) for i, label in enumerate(labels)], value=0, description="example",
                            layout=wide)
    text = widgets.Text(value=prompts[0][0], description="prompt", continuous_update=False, layout=wide)
    # the label's own width ("initial"): the default 80 px cut "temperature" to "temperat…" in JupyterLab
    temp = widgets.FloatLogSlider(value=temperature, base=10, min=-0.5, max=1.5, step=0.05,
                                  description="temperature", continuous_update=False,
                                  style={"description_width": "initial"}, layout=widgets.Layout(width="60%"))
    pick.observe(lambda change: setattr(text, "value", prompts[change["new"]][0]), names="value")
    render = lambda i, prompt, t: _render(pair_for(prompts[i][1]), prompt, t, k)  # noqa: E731
    return explorer([pick, text, temp], render, render(0, prompts[0][0], temperature))


# ---- notebook 05: the task teacher and the stage-2 student of a task --------------------------------------
def task_prompts(cfg: Any, n: int = 3) -> list[tuple[str, str]]:
    """``n`` training inputs per task of ``cfg.tasks`` as ``(prompt up to the answer slot, task)``, in the
    task teacher's pattern (what stage 2 distils)."""
    out = []
    for task in cfg.tasks:
        pattern_id, _ = cloze_settings(cfg, task)
        for ex in read_inputs(task, "train", cfg.superglue_dir)[:n]:
            out.append(("".join(t for t, _ in PATTERNS[task](ex, pattern_id).parts).rstrip(), task))
    return out


def stage2_pairs(run_dir: str | Path) -> Callable[[str | None], tuple[Student, Student]]:
    """``pair_for(task)``: the task teacher (notebook 04) and the stage-2 student (notebook 05) of ``task``,
    loaded on the CPU on first use and kept (one pair per task the reader looks at)."""
    cache: dict[str | None, tuple[Student, Student]] = {}

    def pair_for(task: str | None) -> tuple[Student, Student]:
        if task not in cache:
            model, tokenizer = load_teacher(teacher_dir(run_dir, task), device="cpu", dtype=torch.float32)
            cache[task] = (Student(model, tokenizer), load_student(artifact(run_dir, "stage2", "student", task)))
        return cache[task]

    return pair_for
