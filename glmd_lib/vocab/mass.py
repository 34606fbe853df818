"""The teacher's probability mass on kept tokens (notebook 02): how much of what stage 1 distils the student can
express at all.

Stage 1 teaches the student the teacher's next-token distribution at temperature ``T`` over the student's ``K``
rows. The teacher's mass on kept tokens, ``m``, says how far that target is from the teacher's own:
``pruned_mass="renormalize"`` (the paper) divides the kept probabilities by ``m``; ``"substitute"`` moves the
pruned ``1 - m`` onto the substitutes' rows. At ``T = 1`` a trained teacher puts most of its mass on a few
frequent tokens, so ``m`` is high even for a small ``K``; as ``T`` grows the distribution flattens and ``m``
falls towards the kept share of the vocabulary ``K / V`` (its value for a uniform distribution).

:func:`teacher_mass` measures ``m`` per held-out position at the map's size (``T = 1`` and the distillation
temperature) and, in the same pass over the teacher, its mean over a grid of kept sizes and temperatures
(:func:`mass_grid_sums`), which notebook 02's explorer (:func:`glmd_lib.vocab.plots.mass_explorer`) reads
through :func:`mass_point`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from glmd_lib.vocab.vocab_map import VocabMap, kept_size

MASS_TEMPERATURES = (1.0, 15.0)  # the teacher's kept mass at T = 1 and at the distillation temperature
GRID_KEEP_RATES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
GRID_TEMPERATURES = (1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0)
STATIC_TEMPERATURES = ("T=1", "T=5", "T=15", "T=30")  # the explorer's table where no widget can be shown
CHUNK_ELEMENTS = 1 << 24  # positions x vocabulary per step of the grid: 64 MB of float32
# the grid's mean is taken over at most this many held-out positions, spread evenly: one exp pass per position,
# id and temperature is the costly part (1,024 x 49k x 8 takes seconds on a laptop's CPU, a 262k vocabulary 5x more)
GRID_POSITIONS = 1024


def keep_order(counts: np.ndarray, protected: Sequence[int]) -> np.ndarray:
    """Every id in the order the keep rule takes them: the protected ids, then the others by count (ties by
    id). For ``K`` above the number of protected ids, the first ``K`` are the ids
    :func:`~glmd_lib.vocab.vocab_map.select_kept` keeps at size ``K``."""
    counts = np.asarray(counts)
    is_protected = np.zeros(len(counts), dtype=bool)
    is_protected[list(protected)] = True
    order = np.argsort(-counts, kind="stable")
    return np.concatenate([np.flatnonzero(is_protected), order[~is_protected[order]]])


def grid_sizes(vocab_size: int, num_protected: int, multiple_of: int, extra: Sequence[int] = ()) -> list[int]:
    """The grid's kept sizes: each of :data:`GRID_KEEP_RATES` rounded as a map rounds it, plus ``extra`` (the
    map's own size); only sizes a map can have (more than the protected ids, fewer than the vocabulary)."""
    sizes = {kept_size(vocab_size, r, multiple_of) for r in GRID_KEEP_RATES} | {int(k) for k in extra}
    return sorted(k for k in sizes if num_protected < k < vocab_size)


def mass_grid_sums(logits: torch.Tensor, order: torch.Tensor, sizes: Sequence[int],
                   temperatures: Sequence[float] = GRID_TEMPERATURES) -> torch.Tensor:
    """``[len(temperatures), len(sizes)]`` float64: the teacher's probability mass on the first ``sizes[j]`` ids
    of ``order`` (a permutation of the ``V`` token ids), summed over the positions of ``logits`` (``[N, V']``;
    columns from ``V`` on, a padded output layer's, count in the softmax only).

    The logits are put in ``order`` once; per temperature one ``exp`` pass gives every size, as sums over the
    slices between consecutive sizes. Positions go in chunks of at most :data:`CHUNK_ELEMENTS` floats (a 262k
    vocabulary needs no more memory than a small one).
    """
    bounds = [0, *sizes]
    order = torch.as_tensor(order, dtype=torch.long).to(logits.device)
    out = torch.zeros(len(temperatures), len(sizes), dtype=torch.float64)
    step = max(1, CHUNK_ELEMENTS // logits.shape[-1])
    for start in range(0, logits.shape[0], step):
        x = logits[start:start + step].float()
        top = x.max(-1, keepdim=True).values
        ranked, rest = x.index_select(-1, order) - top, x[:, len(order):] - top
        for i, t in enumerate(temperatures):
            e = (ranked / t).exp_()
            total = e.sum(-1) + (rest / t).exp_().sum(-1)
            parts = torch.stack([e[:, a:b].sum(-1) for a, b in zip(bounds, bounds[1:])], -1)
            out[i] += (parts.cumsum(-1) / total[:, None]).sum(0).double().cpu()
    return out


class _GridSums:
    """Running :func:`mass_grid_sums` of :func:`teacher_mass` over every ``stride``-th held-out position, so that
    at most :data:`GRID_POSITIONS` are used, spread evenly over the text (no grid without ``counts``)."""

    def __init__(self, vmap: VocabMap, counts: np.ndarray | None, positions: int) -> None:
        self.sizes = [] if counts is None else grid_sizes(vmap.vocab_size, len(vmap.protected_ids),
                                                          vmap.meta.get("multiple_of", 64), [vmap.num_kept])
        self.order = torch.from_numpy(keep_order(counts, vmap.protected_ids)) if self.sizes else None
        self.stride, self.seen, self.used, self.vocab_size = max(1, -(-positions // GRID_POSITIONS)), 0, 0, vmap.vocab_size
        self.sums = torch.zeros(len(GRID_TEMPERATURES), len(self.sizes), dtype=torch.float64)

    def add(self, logits: torch.Tensor) -> None:
        """``logits``: ``[n, V']`` at the next ``n`` real positions."""
        pick = (self.seen + torch.arange(len(logits), device=logits.device)) % self.stride == 0
        self.seen += len(logits)
        if self.sizes and bool(pick.any()):
            self.sums += mass_grid_sums(logits[pick], self.order, self.sizes)
            self.used += int(pick.sum())

    def frame(self) -> pd.DataFrame:
        return grid_frame(self.sizes, (self.sums / max(self.used, 1)).tolist(), self.vocab_size)


@torch.no_grad()
def teacher_mass(teacher: Any, tokenizer: Any, vmap: VocabMap, lines: list[str], device: torch.device,
                 counts: np.ndarray | None = None, batch_size: int = 8, max_length: int = 128) -> dict[str, Any]:
    """The teacher's next-token probability on kept tokens, per real (non-padding) position of ``lines``.

    Returns the masses per temperature, the share of positions whose argmax is kept, the mean total
    variation distance between the two treatments of the pruned mass (renormalize vs. substitute, T = 1)
    and, given the corpus ``counts``, the mean mass over the grid (``"grid"``: :func:`grid_frame`) on
    ``"grid_positions"`` of the positions.
    """
    lines = sorted(lines, key=len)  # similar lengths per batch: little padding
    lengths = [min(len(ids), max_length) for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]]
    grid = _GridSums(vmap, counts, sum(lengths))
    masses: dict[float, list[torch.Tensor]] = {t: [] for t in MASS_TEMPERATURES}
    argmax_kept, tv = [], []
    for start in range(0, len(lines), batch_size):
        enc = tokenizer(lines[start:start + batch_size], add_special_tokens=False, truncation=True,
                        max_length=max_length, padding=True, return_tensors="pt").to(device)
        logits = teacher(**enc).logits.float()
        real = enc["attention_mask"].bool()  # padding comes from the mask (pad id == eos id for SmolLM2)
        for t in MASS_TEMPERATURES:
            masses[t].append(vmap.kept_mass(logits, temperature=t)[real].cpu())
        argmax_kept.append(vmap.is_kept(logits.argmax(-1))[real].cpu())
        diff = vmap.restrict_probs(logits, pruned_mass="renormalize") - vmap.restrict_probs(logits, pruned_mass="substitute")
        tv.append((0.5 * diff.abs().sum(-1))[real].cpu())
        grid.add(logits[real])
    kept = torch.cat(argmax_kept)
    return {"masses": {t: torch.cat(m).numpy() for t, m in masses.items()}, "positions": int(kept.numel()),
            "argmax_kept": float(kept.float().mean()), "tv": float(torch.cat(tv).mean()),
            "grid": grid.frame(), "grid_positions": grid.used}


def mass_summary(masses: dict[float, np.ndarray]) -> dict[str, dict[str, float]]:
    return {f"T={t:g}": {"mean": float(m.mean()), "median": float(np.median(m)), "p10": float(np.quantile(m, 0.1))}
            for t, m in masses.items()}


def grid_frame(sizes: Sequence[int], mean: Sequence[Sequence[float]], vocab_size: int,
               temperatures: Sequence[float] = GRID_TEMPERATURES) -> pd.DataFrame:
    """The grid as a table: one row per kept size (index ``kept``), its share of the vocabulary, and the mean
    kept mass per temperature (columns ``T=1`` ...); ``mean`` is ``[temperature][size]``."""
    table = pd.DataFrame({f"T={t:g}": list(row) for t, row in zip(temperatures, mean)},
                         index=pd.Index(list(sizes), name="kept"))
    table.insert(0, "share of vocabulary", table.index / vocab_size)
    return table


def grid_record(grid: pd.DataFrame) -> dict[str, Any]:
    """``summary.json``'s form of a :func:`grid_frame` table: ``grid_frame(**record, vocab_size=V)`` reads it back."""
    temps = [c for c in grid.columns if c.startswith("T=")]
    return {"sizes": grid.index.tolist(), "mean": [grid[c].tolist() for c in temps],
            "temperatures": [float(c[2:]) for c in temps]}


def mass_point(grid: pd.DataFrame, kept: int, temperature: str) -> dict[str, float]:
    """What one (kept size, temperature) point of the grid means for stage 1's target (the explorer's table).

    The factors use the mean mass, so they are typical values, not the mean of per-position factors.
    """
    m = float(grid.loc[kept, temperature])
    return {"kept tokens": int(kept), "share of vocabulary": float(grid.loc[kept, "share of vocabulary"]),
            f"teacher mass on kept tokens at {temperature}": m,
            "at T=1, for comparison": float(grid.loc[kept, "T=1"]),
            "renormalize: kept probabilities scaled by about": 1 / m if m > 0 else float("inf"),
            "substitute: share of the target moved onto substitutes": 1 - m}


def static_mass_table(grid: pd.DataFrame) -> pd.DataFrame:
    """A few temperatures of the grid for every kept size: what the explorer shows without a widget."""
    return grid[["share of vocabulary", *[c for c in STATIC_TEMPERATURES if c in grid.columns]]]
