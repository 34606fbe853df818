"""The notebooks in JupyterLab, as a person runs them: open, Run ▸ Run All Cells, look.

Asserted: the server serves the repository (notebooks/ and runs/ both in the file browser); a failing cell
is seen (the detector can fail); every notebook runs with no error output; moving notebook 01's slider
changes its table; every image of the report loads, in notebook 07 and in report.md's Markdown Preview.
Fixtures and settings: conftest.py. Screenshots: ``<run_dir>/browser/``.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_file_browser_serves_the_repository(lab, run_dir):
    """`make lab`'s server root (tools/lab.sh): a person reaches both the notebooks and the runs."""
    names = lab.file_browser("")
    lab.screenshot("file_browser_root")
    assert {"notebooks", "runs"} <= set(names), f"the server root lists {names}"
    runs = lab.file_browser(str(run_dir.parent.relative_to(ROOT)))
    assert run_dir.name in runs, f"{run_dir.parent} lists {runs}"


def test_a_failing_cell_is_detected(lab, shots):
    """The error check itself: a notebook whose second cell raises shows exactly that error, and Run All
    stops there (so a cell never reached is reported too)."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("print('before')"), nbformat.v4.new_code_cell("1 / 0"),
                nbformat.v4.new_code_cell("print('never reached')")]
    nbformat.write(nb, shots / "probe.ipynb")
    run = lab.run_all(str((shots / "probe.ipynb").relative_to(ROOT)), timeout=120)
    lab.cell_screenshots("probe")
    lab.shutdown_kernel()
    assert run.errors == ["cell 1: ZeroDivisionError: division by zero"], run.errors
    assert run.unexecuted == [2]


def check_runs(lab, run):
    assert run.problem is None, f"{run.path}: {run.problem}"
    assert not run.errors, f"{run.path} shows errors: {run.errors}"


def check_slider(lab, run):
    """Drag the slider's handle as a person would; the table beside it must follow the new value."""
    from lab_page import wait_for  # here, not at the top: selenium exists only after `make browser-setup`

    handle, readout, table = lab.slider_table()
    before, before_table = readout.text, table.text
    lab.drag(handle, -40)
    wait_for("the slider's table to change", lambda: readout.text != before and table.text != before_table, 30)
    after = int(re.sub(r"\D", "", readout.text))
    lab.screenshot("01_word_frequency/slider_moved")
    assert f"top {after:,} " in table.text, f"slider at {after}, table shows: {table.text[:200]}"


def check_report_images(lab, run):
    """Every <img> in the notebook (the rendered report among them) has loaded: naturalWidth > 0."""
    _assert_images_load(lab.images(at_least=1), "notebook 07")


def _assert_images_load(images, where):
    assert images, f"{where} shows no image at all"
    broken = [i for i in images if i["width"] == 0]
    assert not broken, (f"{len(broken)} of {len(images)} images in {where} do not load; e.g. src="
                        f"{broken[0]['src']!r}, fetched as {broken[0]['resolved']!r}")


CHECKS = {"runs-without-errors": check_runs, "slider-changes-table": check_slider,
          "report-images-load": check_report_images}
EXTRA = {"01": ["slider-changes-table"], "07": ["report-images-load"]}
# each notebook's checks right after its run, while it is still open
STEPS = [(nb, check) for nb in NOTEBOOKS for check in ["runs-without-errors"] + EXTRA.get(nb[:2], [])]


@pytest.mark.parametrize("notebook,check", STEPS, ids=[f"{n}:{c}" for n, c in STEPS])
def test_notebook(notebooks, lab, notebook, check):
    run = notebooks.run(notebook)
    CHECKS[check](lab, run)


def test_report_markdown_images_load(notebooks, lab, run_dir):
    """report.md opened from the file browser's tree in the Markdown Preview: its relative image links."""
    if notebooks.open is not None:
        lab.shutdown_kernel()
        notebooks.open = None
    report = run_dir / "report" / "report.md"
    assert report.exists(), f"no {report}: notebook 07 did not write it"
    lab.open(str(report.relative_to(ROOT)))
    images = lab.images(at_least=1)
    lab.screenshot("report_md_top")
    _assert_images_load(images, str(report.relative_to(ROOT)))
