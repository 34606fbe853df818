"""The notebooks in JupyterLab, as a person runs them: open, Run ▸ Run All Cells, look.

Asserted: the server serves the repository (notebooks/ and runs/ both in the file browser); a failing cell
is seen (the detector can fail); every notebook runs with no error output and prints no absolute path of the
repository; moving notebook 01's slider changes its table; every explorer (02 tokens, 03 and 05 next words,
06 errors) renders, follows its input (a typed text, a dragged temperature, a picked task input, task or
model), shows no error and no cut-off label; notebook 02's sizes table ends with the full vocabulary, as its
text says; notebook 05's input preview shows no literal ``\\n``; every image of the report loads, in
notebook 07 and in report.md's Markdown Preview, and no table of notebook 07 is wider than the notebook.
What only eyes can judge (a legend over bars, a curve in the live loss plot) is in the screenshots.
Fixtures and settings: conftest.py. Screenshots: ``<run_dir>/browser/``.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from glmd_lib.pipeline import ON_DEMAND

ROOT = Path(__file__).resolve().parents[2]
# the notebooks a plain `glmd run` executes (08 runs on a comparison's directory only: `glmd compare`)
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb") if p.stem[:2] not in ON_DEMAND)


def test_file_browser_serves_the_repository(lab, run_dir):
    """`make lab`'s server root (tools/lab.sh): a person reaches both the notebooks and the runs."""
    names = lab.file_browser("")
    lab.screenshot("file_browser_root")
    assert {"notebooks", "runs"} <= set(names), f"the server root lists {names}"
    runs = lab.file_browser(str(run_dir.parent.relative_to(ROOT)))
    lab.screenshot("file_browser_runs")
    assert run_dir.name in runs, f"{run_dir.parent} lists {runs}"


WIDE = "| " + " | ".join(f"selection_score_column_{i}" for i in range(12)) + " |\n|" + "---|" * 12 + "\n"
PROBE = ["print('before')",
         f"from IPython.display import Markdown\nMarkdown({WIDE!r})",  # wider than any notebook
         "import ipywidgets\nipywidgets.FloatSlider(description='temperature of the explorer')",  # label cut short
         "from glmd_lib.explore import explorer\nexplorer([ipywidgets.IntText(value=1)], lambda n: [n / 0], [])",
         "1 / 0", "print('never reached')"]


def test_the_detectors_see_what_they_look_for(lab, shots):
    """The checks themselves can fail: in a probe notebook, a cell that raises shows exactly that error (and
    Run All stops there, so a cell never reached is reported too); a table wider than the notebook, a cut-off
    widget label and an explorer whose view shows an error are all found."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(src) for src in PROBE]
    nbformat.write(nb, shots / "probe.ipynb")
    run = lab.run_all(str((shots / "probe.ipynb").relative_to(ROOT)), timeout=120)
    try:
        assert run.errors == ["cell 4: ZeroDivisionError: division by zero"], run.errors
        assert run.unexecuted == [5]
        assert [t["head"][:24] for t in lab.wide_tables()] == ["selection_score_column_0"]
        slider = wait_for_widget(lab, "FloatSlider(")
        assert [t.split(" (")[0] for t in lab.truncated_labels(slider)] == ["temperature of the explorer"]
        assert "ZeroDivisionError" in " ".join(lab.explorer("explorer([").errors())
    finally:
        lab.cell_screenshots("probe")
        lab.shutdown_kernel()


def wait_for_widget(lab, source: str):
    """The rendered widget in the output of the cell whose source contains ``source``."""
    from lab_page import wait_for

    cell = lab.cell(source)
    return wait_for(f"the widget of {source!r}", lambda: lab.widgets(cell), 60)[0]


def check_runs(lab, run):
    assert run.problem is None, f"{run.path}: {run.problem}"
    assert not run.errors, f"{run.path} shows errors: {run.errors}"
    # a path of this machine means nothing to a reader (and notebook 03 once ended by printing one)
    printed = [p for p in run.stdout if str(ROOT) in p]
    assert not printed, f"{run.path} prints absolute paths: {printed}"
    cut = lab.truncated_labels(lab.panel())
    assert not cut, f"{run.path}: widget labels or read-outs cut short: {cut}"


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


def check_report_tables_fit(lab, run):
    """Every table of notebook 07 fits its output area (the stage-2 table was cut off at the right)."""
    wide = lab.wide_tables()
    assert not wide, f"tables wider than notebook 07: {wide}"


def check_sizes_table(lab, run):
    """Notebook 02 says its sizes table ends with the full vocabulary (not the ALBERT alternative): it does."""
    text, table = lab.cell("last row is the full"), lab.cell("res.sizes.round(4)")
    lab.element_screenshots([(text, "02_vocab_pruning/sizes_text"), (table, "02_vocab_pruning/sizes_table")])
    heads, rows = lab.output_table(table)
    row = dict(zip(heads, rows[-1]))
    assert float(row["share of vocabulary"]) == 1.0 and float(row["parameters vs full"]) == 1.0, row
    said = " ".join(text.text.split())
    assert "last row is the full vocabulary" in said and "is not a row of the table" in said, said


def check_input_preview(lab, run):
    """Notebook 05's preview of the training inputs shows line breaks as such, never a literal backslash-n."""
    shown = lab.output_text(lab.cell("input_preview(cfg)"))
    assert shown.strip() and "\\n" not in shown, shown[:500]


def _explorer_fine(lab, ex, what: str) -> None:
    """No error in the view, no description cut short, no error output anywhere in the notebook."""
    from lab_page import NotebookRun

    assert not ex.errors(), f"{what} shows an error: {ex.errors()}"
    assert not ex.truncated_labels(), f"{what}: labels cut short: {ex.truncated_labels()}"
    now = NotebookRun(lab.current, cells=(lab.state() or {}).get("cells", []))
    assert not now.errors, f"{lab.current} shows errors after using {what}: {now.errors}"


TYPED = "The cat sat on the xylophone."


def check_tokens_explorer(lab, run):
    """02: type a sentence, press Enter: the table lists its tokens, the header counts them."""
    ex = lab.explorer("token_explorer(")
    before = ex.text()
    ex.type(TYPED)
    after = ex.changed(before)
    ex.screenshot("02_vocab_pruning/explorer_typed")
    n = int(re.search(r"(\d+) tokens, \d+ pruned", after).group(1))
    _, rows = lab.output_table(ex.box)
    assert len(rows) == n and "' cat'" in after and "The student reads" in after, after[:500]
    _explorer_fine(lab, ex, "the token explorer")


def _temperature(ex, view_before: str) -> None:
    """Drag the temperature slider: the view recomputes at the read-out's temperature."""
    _, shown = ex.slide(60)
    after = ex.changed(view_before)
    t = float(re.search(r"at T = ([\d.]+)", after).group(1))
    assert t == pytest.approx(float(shown), rel=0.01, abs=0.006), f"slider at {shown}, view: {after[:300]}"
    assert re.search(r"KL\(teacher ‖ student\) at T = [\d.]+: [\d.e+-]+", after), after[:300]


def check_next_words_explorer(lab, run):
    """03: move the temperature: the two distributions and their KL are recomputed at it."""
    ex = lab.explorer("next_word_explorer(")
    _temperature(ex, ex.text())
    ex.screenshot("03_stage1_distillation/explorer_temperature")
    _explorer_fine(lab, ex, "the next-word explorer")


def check_task_explorer(lab, run):
    """05: pick another task's training input (its models load on first use), then move the temperature."""
    ex = lab.explorer("next_word_explorer(")
    options = ex.options()
    before, prompt = ex.text(), ex.value()
    picked = ex.pick(len(options) - 1)
    after = ex.changed(before, timeout=300)
    assert ex.value() != prompt, f"picking {picked!r} left the prompt box at {prompt!r}"
    ex.screenshot("05_stage2_distillation/explorer_picked")
    _temperature(ex, after)
    ex.screenshot("05_stage2_distillation/explorer_temperature")
    _explorer_fine(lab, ex, "the task next-word explorer")


def check_errors_explorer(lab, run):
    """06: pick another model, then another task: the header, matrix and errors follow."""
    ex = lab.explorer("error_explorer(")
    task, model = re.search(r"(\S+) on (\S+?):", ex.text()).group(2, 1)
    for nth, current in ((1, model), (0, task)):
        other = next(o for o in ex.options(nth) if o != current)
        before = ex.text()
        ex.pick(other, nth)
        after = ex.changed(before)
        task, model = (task, other) if nth == 1 else (other, model)
        assert f"{model} on {task}:" in after and "errors of" in after, after[:300]
    ex.screenshot("06_superglue_eval/explorer_picked")
    _explorer_fine(lab, ex, "the error explorer")


CHECKS = {"runs-without-errors": check_runs, "slider-changes-table": check_slider,
          "report-images-load": check_report_images, "report-tables-fit": check_report_tables_fit,
          "sizes-table-ends-full": check_sizes_table, "input-preview-no-backslash-n": check_input_preview,
          "tokens-explorer": check_tokens_explorer, "next-words-explorer": check_next_words_explorer,
          "task-next-words-explorer": check_task_explorer, "errors-explorer": check_errors_explorer}
EXTRA = {"01": ["slider-changes-table"], "02": ["sizes-table-ends-full", "tokens-explorer"],
         "03": ["next-words-explorer"], "05": ["input-preview-no-backslash-n", "task-next-words-explorer"],
         "06": ["errors-explorer"], "07": ["report-images-load", "report-tables-fit"]}
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
