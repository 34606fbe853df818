"""The one mechanism behind the notebooks' explorers: a widget that still shows something headless.

An explorer is an ``ipywidgets`` box of controls plus an ``HTML`` view that the controls' ``observe``
callbacks rewrite (not an ``interactive`` output area: output-capturing widgets can stall headless executors
such as nbclient/papermill, this cannot). Its display data carries, next to the widget view, a *static*
HTML and plain-text form: a live frontend (Jupyter with the kernel) draws the widget, anything else (a
notebook executed by papermill and opened without its kernel, an HTML export, ``nbval``) falls back to
the static table or figure. This is the mechanism of :func:`glmd_lib.vocab.plots.mass_explorer`, written
once here for the explorers of notebooks 02, 03, 05 and 06.
"""
from __future__ import annotations

import base64
import html
import io
import re
from typing import Any, Callable, Sequence

import pandas as pd

# marks an error the view shows instead of its output: the cell itself raised nothing, so Jupyter shows no error
# output; the browser tests (tests/browser) look for this class
ERROR_CLASS = "glmd-explore-error"


def _blank_missing(table: pd.DataFrame) -> pd.DataFrame:
    """Missing values of nullable columns (``Int64``, ``Float64``) as blanks: ``to_html`` writes them as
    ``<NA>`` whatever its ``na_rep`` (a kept token has no substitute: nothing to show, not "<NA>")."""
    out = table.copy()
    for c in out.columns:
        col = out[c]
        if isinstance(col.dtype, pd.api.extensions.ExtensionDtype) and col.isna().any():
            out[c] = col.astype("float64") if pd.api.types.is_float_dtype(col.dtype) else \
                col.astype(object).where(col.notna(), "")
    return out


def static_html(*parts: Any) -> str:
    """HTML of tables (``DataFrame``), figures (anything with ``savefig``) and strings, one after the other."""
    out = []
    for p in parts:
        if isinstance(p, pd.DataFrame):
            # 4 significant digits: probabilities of 1e-4 would all print as 0.0000 with 4 decimals
            out.append(_blank_missing(p).to_html(float_format="{:.4g}".format, na_rep=""))
        elif hasattr(p, "savefig"):
            buf = io.BytesIO()
            p.savefig(buf, format="png", bbox_inches="tight")
            out.append(f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>')
        else:
            out.append(f"<p>{p}</p>")
    return "\n".join(out)


def static_text(*parts: Any) -> str:
    """Plain-text form of the same parts (figures are named, not drawn; strings lose their HTML tags)."""
    return "\n\n".join(p.to_string() if isinstance(p, pd.DataFrame)
                       else "<figure>" if hasattr(p, "savefig") else re.sub(r"<[^>]+>", "", str(p)) for p in parts)


def explorer(controls: Sequence[Any], render: Callable[..., Sequence[Any]], static: Sequence[Any]):
    """A ``VBox`` of ``controls`` and an ``HTML`` view of ``render(*control values)`` (tables, figures,
    strings), redrawn when a control changes; without a live frontend the output is ``static`` instead."""
    import ipywidgets as widgets

    class Explorer(widgets.VBox):
        def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
            return {**super()._repr_mimebundle_(**kwargs), "text/plain": static_text(*static),
                    "text/html": static_html(*static)}

    def draw() -> str:
        try:
            return static_html(*render(*(c.value for c in controls)))
        except Exception as e:  # a prompt the model cannot read should not kill the widget
            return f'<p class="{ERROR_CLASS}"><b>{type(e).__name__}</b>: {html.escape(str(e))}</p>'

    view = widgets.HTML(draw())
    for c in controls:
        c.observe(lambda _change: setattr(view, "value", draw()), names="value")
    return Explorer([*controls, view])
