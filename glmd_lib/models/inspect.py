"""What notebook 00 shows about a teacher: next-word distributions, size and speed on this machine.

:func:`run_overview` is the notebook's work: it writes ``overview/`` (``summary.json``, ``next_tokens.csv``,
``next_tokens.png``) and marks the stage complete.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from glmd_lib.artifacts import STAGES, artifact, atomic_write_csv, atomic_write_json, begin_stage, mark_complete, save_figure
from glmd_lib.device import get_device
from glmd_lib.models.teacher import count_parameters, load_teacher, model_kind


@torch.no_grad()
def next_token_table(model, tokenizer, prompts: list[str], k: int = 10) -> pd.DataFrame:
    """Top-k next tokens after each prompt (causal LMs), or at an appended mask (masked LMs)."""
    device = next(model.parameters()).device
    rows = []
    masked = model_kind(model.config) == "masked"
    for prompt in prompts:
        text = f"{prompt} {tokenizer.mask_token}" if masked else prompt
        enc = tokenizer(text, return_tensors="pt").to(device)
        logits = model(**enc).logits[0]
        pos = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0] if masked else -1
        probs = logits[pos].float().softmax(-1)
        top = probs.topk(k)
        for rank, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1):
            rows.append({"prompt": prompt, "rank": rank, "token": tokenizer.decode([i]), "token_id": i,
                         "probability": p})
    return pd.DataFrame(rows)


def describe(model, tokenizer) -> dict:
    cfg = model.config
    return {
        "architecture": type(model).__name__,
        "kind": model_kind(cfg),
        "parameters": count_parameters(model),
        "vocab_size": len(tokenizer),
        "layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "attention_heads": getattr(cfg, "num_attention_heads", None),
        "max_positions": getattr(cfg, "max_position_embeddings", None),
        "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
    }


@torch.no_grad()
def forward_speed(model, vocab_size: int, batches: int = 3, batch_size: int = 8, seq_len: int = 128,
                  seed: int = 0) -> dict:
    """Tokens per second of a plain forward pass on random ids (one warm-up batch not timed)."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batches + 1, batch_size, seq_len), generator=g)
    model(input_ids=ids[0].to(device))  # warm-up
    start = time.perf_counter()
    for b in range(1, batches + 1):
        model(input_ids=ids[b].to(device))
    elapsed = time.perf_counter() - start
    tokens = batches * batch_size * seq_len
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed,
            "batch_size": batch_size, "seq_len": seq_len, "threads": torch.get_num_threads()}


def plot_next_tokens(table: pd.DataFrame):
    """One horizontal bar chart per prompt: the teacher's top next words and their probabilities."""
    import matplotlib.pyplot as plt

    prompts = list(dict.fromkeys(table["prompt"]))
    fig, axes = plt.subplots(1, len(prompts), figsize=(4.5 * len(prompts), 3.5), squeeze=False)
    for ax, (prompt, group) in zip(axes[0], table.groupby("prompt", sort=False)):
        ax.barh([repr(t) for t in group["token"]][::-1], group["probability"][::-1])
        ax.set_title(f"“{prompt} …”", fontsize=10)
        ax.set_xlabel("probability")
    fig.tight_layout()
    plt.close(fig)  # shown where the notebook displays it, not where it was drawn
    return fig


@dataclass
class Overview:
    """What :func:`run_overview` found (and wrote into ``overview/``)."""

    info: dict[str, Any]  # :func:`describe`
    next_tokens: pd.DataFrame  # :func:`next_token_table`
    speed: dict[str, Any]  # :func:`forward_speed`
    device: str
    figure: Any  # the next-token bar charts (matplotlib Figure)


def run_overview(cfg) -> Overview:
    """Notebook 00's work (``cfg``: an :class:`~glmd_lib.config.stages.OverviewConfig`): load the teacher,
    describe it, tabulate and plot its next words for ``cfg.prompts``, time its forward pass; write the
    stage's artifacts and mark it complete."""
    begin_stage(cfg)
    dev = get_device(cfg.device)
    model, tokenizer = load_teacher(cfg.teacher, device=dev)
    info = describe(model, tokenizer)
    table = next_token_table(model, tokenizer, cfg.prompts, k=cfg.top_k)
    speed = forward_speed(model, info["vocab_size"], batches=cfg.speed_batches, seed=cfg.seed)
    result = Overview(info, table, speed, str(dev), plot_next_tokens(table))
    atomic_write_csv(artifact(cfg.run_dir, "overview", "next_tokens.csv"), table)
    save_figure(result.figure, cfg.out_dir, "next_tokens")
    atomic_write_json(artifact(cfg.run_dir, "overview", "summary.json"),
                      {"teacher": cfg.teacher, **info, "device": result.device, "speed": speed})
    mark_complete(cfg.out_dir, list(STAGES["overview"].files) + ["next_tokens.png"])
    return result
