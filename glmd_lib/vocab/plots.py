"""The figures and the interactive explorer of notebooks 01 and 02 (drawn from their result objects).

Figures are built as ``matplotlib.figure.Figure`` objects, not through ``pyplot``: nothing is drawn into a
notebook cell by accident and nothing stays open in a long-running process. :mod:`glmd_lib.vocab.analysis`
saves them next to the stage's artifacts; a notebook shows one with ``display(fig)``. ``res`` is a
``FrequencyResult`` (notebook 01) or a ``VocabResult`` (notebook 02) of that module (not imported here:
it imports this one).
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from glmd_lib.vocab.frequency import COVERAGE_SIZES, frequency_order
from glmd_lib.vocab.mass import mass_point, static_mass_table


class ShownFigure(Figure):
    """A ``Figure`` that IPython shows as the PNG it saves, whatever state pyplot's backend is in.

    A bare ``Figure`` is shown as an image only once the inline backend module has been loaded (which
    happens on the first pyplot drawing, not on ``import matplotlib.pyplot``); before that, a notebook would
    print ``<Figure size 800x400 with 1 Axes>`` instead.
    """

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def _figure(**kw: Any) -> tuple[Figure, Any]:
    fig = ShownFigure(**kw)
    return fig, fig.subplots()


# --------------------------------------------------------------------------------------------
# notebook 01
# --------------------------------------------------------------------------------------------

def rank_frequency(res: Any) -> Figure:
    """Rank-frequency on log-log axes, where Zipf's law ``f(r) = C r^-s`` is a straight line; with the fit."""
    fig, ax = _figure()
    seen = res.counts[frequency_order(res.counts)]
    seen = seen[seen > 0]
    ranks = np.arange(1, len(seen) + 1)
    ax.loglog(ranks, seen, lw=1.5, label="corpus")
    s, c = res.summary["zipf_exponent"], res.summary["zipf_intercept"]
    ax.loglog(ranks, np.exp(c) * ranks ** -s, "--", color="k", lw=1, label=f"Zipf fit, s = {s:.2f}")
    task = np.sort(res.superglue)[::-1]
    task = task[task > 0]
    ax.loglog(np.arange(1, len(task) + 1), task, lw=1, alpha=0.7, label="SuperGLUE texts")
    ax.set(xlabel="rank", ylabel="count", title="rank–frequency")
    ax.legend()
    return fig


def coverage_curves(res: Any) -> Figure:
    """Cumulative coverage of the corpus and of the SuperGLUE texts by the corpus's top-k tokens."""
    fig, ax = _figure()
    curves = res.curves()
    V = len(res.counts)
    k = np.arange(1, V + 1)
    for color, (name, label) in enumerate((("corpus", "corpus"),
                                           ("SuperGLUE (all)", "SuperGLUE (ranked by corpus counts)"))):
        ax.plot(k, curves[name], label=label)
        marks = [size for size in COVERAGE_SIZES if size <= V]
        ax.plot(marks, [curves[name][m - 1] for m in marks], "o", color=f"C{color}")
    ax.axvline(V // 2, ls=":", color="gray", label="half the vocabulary")
    ax.set(xscale="log", xlabel="kept tokens k (most frequent first)", ylabel="share of tokens covered",
           ylim=(0, 1.01), title="cumulative coverage")
    ax.legend(loc="lower right")
    return fig


def coverage_bars(res: Any) -> Figure:
    fig, ax = _figure(figsize=(9, 4))
    res.coverage[["corpus", "SuperGLUE (all tasks)"]].plot.bar(ax=ax, rot=0)
    ax.set(ylim=(min(0.5, res.coverage.values.min() - 0.05), 1.0), ylabel="coverage",
           title="share of tokens covered by the corpus's top-k tokens")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: the bars reach the top
    return fig


def frequency_figures(res: Any) -> dict[str, Figure]:
    """Notebook 01's figures by file name (``<name>.png`` in ``<run_dir>/frequency/``)."""
    return {"rank_frequency": rank_frequency(res), "coverage": coverage_curves(res),
            "coverage_corpus_vs_superglue": coverage_bars(res)}


def coverage_explorer(res: Any, step: int = 64):
    """A slider over the kept size and a table of the coverage it gives on the corpus and each task.

    The table is an ``HTML`` widget updated by the slider's ``observe`` callback, not an ``interactive``
    output area: output-capturing widgets can stall headless executors (nbclient/papermill), this cannot,
    and headless it still shows the table for the default size (half the vocabulary).
    """
    import ipywidgets as widgets
    import pandas as pd

    curves = res.curves()
    V = len(res.counts)

    def table(kept: int) -> str:
        row = {name: f"{curve[kept - 1]:.2%}" for name, curve in curves.items()}
        return pd.DataFrame(row, index=[f"top {kept:,} ({kept / V:.0%} of the vocabulary)"]).T.to_html()

    slider = widgets.IntSlider(value=V // 2, min=step, max=V, step=step, continuous_update=False,
                               description="kept size")
    view = widgets.HTML(table(slider.value))
    slider.observe(lambda change: setattr(view, "value", table(change["new"])), names="value")
    return widgets.VBox([slider, view])


# --------------------------------------------------------------------------------------------
# notebook 02
# --------------------------------------------------------------------------------------------

def coverage_and_size(res: Any) -> Figure:
    """Coverage (left axis) and student parameters (right axis) against the kept size."""
    fig, ax1 = _figure()
    sizes, s = res.sizes, res.summary
    ax1.plot(sizes["kept"], sizes["corpus coverage"], "o-", label="corpus coverage")
    ax1.plot(sizes["kept"], sizes["SuperGLUE coverage"], "s-", label="SuperGLUE coverage")
    ax1.axvline(res.vocab_map.num_kept, ls=":", color="gray")
    ax1.set(xscale="log", xlabel="kept tokens", ylabel="share of tokens kept as is",
            title="coverage and student size against the kept size")
    ax2 = ax1.twinx()
    ax2.plot(sizes["kept"], sizes["student parameters"] / 1e6, "^--", color="C3", label="student parameters")
    ax2.axhline(s["student_parameters_factorized_embedding"] / 1e6, ls="--", color="C4", lw=1,
                label=f"full vocab, factorised E={s['factorized_embedding_size']}")
    ax2.set_ylabel("student parameters (M)")
    ax2.grid(False)
    fig.legend(loc="lower right", bbox_to_anchor=(0.88, 0.15))
    return fig


def kept_mass(res: Any) -> Figure:
    """Histogram of the teacher's held-out next-token mass on kept tokens, per temperature."""
    fig, ax = _figure()
    for t, m in res.masses.items():
        ax.hist(m, bins=40, range=(0, 1), alpha=0.6, label=f"T = {t:g} (mean {m.mean():.3f})")
    ax.set(xlabel="teacher probability mass on kept tokens", ylabel="positions", title="held-out next-token mass")
    ax.legend(loc="upper left")
    return fig


def kept_mass_grid(res: Any) -> Figure:
    """Mean kept mass against the kept share of the vocabulary, one line per temperature; the diagonal is a
    flat distribution's (the limit of high T)."""
    fig, ax = _figure()
    grid = res.mass_grid
    share = grid["share of vocabulary"]
    for col in (c for c in grid.columns if c.startswith("T=")):
        ax.plot(share, grid[col], "o-", ms=3, label=col.replace("=", " = "))
    ax.plot(share, share, ":", color="gray", label="flat distribution (K / V)")
    ax.axvline(res.vocab_map.num_kept / res.vocab_map.vocab_size, ls="--", color="gray", lw=1)
    ax.set(xscale="log", ylim=(0, 1.01), xlabel="kept share of the vocabulary",
           ylabel="teacher mass on kept tokens (mean)", title="kept mass against keep rate and temperature")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: curves fill them
    return fig


def vocab_figures(res: Any) -> dict[str, Figure]:
    """Notebook 02's figures by file name (``<name>.png`` in ``<run_dir>/vocab/``)."""
    figures = {"coverage_and_size": coverage_and_size(res), "kept_mass": kept_mass(res)}
    if len(res.mass_grid):
        figures["kept_mass_grid"] = kept_mass_grid(res)
    return figures


def mass_explorer(grid: Any, kept: int | None = None, temperature: str = "T=15"):
    """Two sliders (kept size, temperature) over :func:`~glmd_lib.vocab.mass.teacher_mass`'s grid and the table
    :func:`~glmd_lib.vocab.mass.mass_point` gives for them (an ``HTML`` widget, as in :func:`coverage_explorer`).

    Where no widget can be drawn (a notebook executed by papermill and opened without its kernel, an HTML
    export) the output falls back to :func:`~glmd_lib.vocab.mass.static_mass_table`, the grid at a few
    temperatures: the widget's display data carries that table as its HTML and plain-text forms.
    """
    import ipywidgets as widgets
    import pandas as pd

    class Explorer(widgets.VBox):
        def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
            static = static_mass_table(grid)
            return {**super()._repr_mimebundle_(**kwargs), "text/plain": static.to_string(),
                    "text/html": static.to_html(float_format="{:.4f}".format)}

    def table(size: int, temp: str) -> str:
        point = {k: f"{v:,}" if isinstance(v, int) else f"{v:.4f}" for k, v in mass_point(grid, size, temp).items()}
        return pd.Series(point).to_frame("value").to_html()

    sizes = [int(k) for k in grid.index]
    size = widgets.SelectionSlider(options=[(f"{k:,}", k) for k in sizes],  # the share is in the table: "(50.(" was cut
                                   value=kept if kept in sizes else sizes[len(sizes) // 2], description="kept",
                                   continuous_update=False)
    temps = [c for c in grid.columns if c.startswith("T=")]
    temp = widgets.SelectionSlider(options=temps, value=temperature if temperature in temps else temps[0],
                                   description="temperature", continuous_update=False,
                                   style={"description_width": "initial"})  # the default 80 px cut it to "temperat…"
    view = widgets.HTML(table(size.value, temp.value))
    for w in (size, temp):
        w.observe(lambda _change: setattr(view, "value", table(size.value, temp.value)), names="value")
    return Explorer([size, temp, view])
