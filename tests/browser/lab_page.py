"""JupyterLab as a person sees it, driven through Selenium: open a document by its URL, click Run ▸ Run All
Cells, wait for the kernel, read what the cells show, move a widget, take screenshots.

Actions go through the UI (URLs, the menu bar, the mouse). What was computed is *read* from JupyterLab's
own notebook model (``window.jupyterapp``, exposed by the server flag ``--LabApp.expose_app_in_browser``),
because an error output is rendered exactly like stderr text (``data-mime-type`` is
``application/vnd.jupyter.stderr`` for both): only the model says which output is an error.

Every wait here is bounded; a timeout raises :class:`LabTimeout` with what the page showed last.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

# the widget of the document in the main area (its panel, not a hidden tab)
CURRENT = "window.jupyterapp && window.jupyterapp.shell.currentWidget"

STATE_JS = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!w || !w.context || w.context.path !== arguments[0] || !w.context.isReady) return null;
if (!w.content || !w.content.model || !w.content.model.cells) return {ready: true, notebook: false};
const cells = [], kernel = w.sessionContext.session && w.sessionContext.session.kernel;
for (const c of w.content.model.cells) {
  const outs = [];
  for (let i = 0; c.outputs && i < c.outputs.length; i++) {
    const o = c.outputs.get(i).toJSON();
    outs.push({type: o.output_type, name: o.name || null, ename: o.ename || null, evalue: o.evalue || null,
               text: o.output_type === 'stream' ? String(o.text).slice(0, o.name === 'stdout' ? 50000 : 500) : null});
  }
  cells.push({type: c.type, count: c.type === 'code' ? c.executionCount : null, outputs: outs});
}
const prompts = [...w.content.node.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent);
return {ready: true, notebook: true, kernel: kernel ? kernel.status : null, cells: cells, prompts: prompts,
        rendered: w.content.node.querySelectorAll('.jp-Cell').length};
"""

IMAGES_JS = """
const root = arguments[0];
return [...root.querySelectorAll('img')].map(i => ({src: i.getAttribute('src') || '', resolved: i.src,
        alt: i.alt, complete: i.complete, width: i.naturalWidth}));
"""


CELL_JS = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!w || !w.content || !w.content.widgets) return 'no notebook is open';
const hits = w.content.widgets.filter(c => c.model.sharedModel.getSource().includes(arguments[0]));
return hits.length === 1 ? hits[0].node : `${hits.length} cells contain it`;
"""

# widget labels and slider read-outs cut short (the text does not fit its box: "temperat…", "24,576 (50.(")
TRUNCATED_JS = """
return [...arguments[0].querySelectorAll('.widget-label, .widget-readout')]
  .filter(l => l.offsetParent !== null && l.textContent.trim() && l.scrollWidth > l.clientWidth + 1)
  .map(l => `${l.textContent.trim()} (${l.scrollWidth} px of text in ${l.clientWidth} px)`);
"""

# tables wider than the output area that shows them (cut off at the right, or only readable by scrolling)
WIDE_TABLES_JS = """
return [...arguments[0].querySelectorAll('.jp-OutputArea-output table')].map(t => {
  const area = t.closest('.jp-OutputArea-output');
  const head = [...t.querySelectorAll('th')].map(h => h.textContent.trim()).slice(0, 12).join(' | ');
  return {width: Math.ceil(t.getBoundingClientRect().width), room: area.clientWidth, head: head};
}).filter(t => t.width > t.room);
"""

EXPLORER_ERROR = "glmd-explore-error"  # glmd_lib.explore.ERROR_CLASS (not imported: no glmd_lib in this process)


class LabTimeout(AssertionError):
    """A bounded wait ran out."""


def wait_for(what: str, probe: Callable[[], Any], timeout: float, poll: float = 0.5) -> Any:
    """``probe()`` until it returns something truthy; :class:`LabTimeout` naming ``what`` after ``timeout`` s."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(poll)
    raise LabTimeout(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class NotebookRun:
    """What one Run All left in a notebook (read from JupyterLab's model when the kernel went idle)."""

    path: str
    seconds: float = 0.0
    cells: list[dict] = field(default_factory=list)
    kernel: str | None = None
    problem: str | None = None  # the run did not finish: timeout, dead kernel, unexecuted cells

    @property
    def errors(self) -> list[str]:
        """One line per error output: ``cell N: Ename: evalue``."""
        return [f"cell {i}: {o['ename']}: {o['evalue']}" for i, c in enumerate(self.cells)
                for o in c["outputs"] if o["type"] == "error"]

    @property
    def unexecuted(self) -> list[int]:
        return [i for i, c in enumerate(self.cells) if c["type"] == "code" and c["count"] is None]

    @property
    def stdout(self) -> list[str]:
        """What the cells print, one entry per stream output: ``cell N: text``."""
        return [f"cell {i}: {o['text']}" for i, c in enumerate(self.cells)
                for o in c["outputs"] if o["type"] == "stream" and o["name"] == "stdout"]

    @property
    def stderr(self) -> list[str]:
        """Stderr text the cells show (warnings, progress bars): reported, not failed on."""
        return [f"cell {i}: {o['text'].strip()[:200]}" for i, c in enumerate(self.cells)
                for o in c["outputs"] if o["type"] == "stream" and o["name"] == "stderr"]


class LabPage:
    """One Chromium tab on one JupyterLab server; ``shots``: the folder for screenshots."""

    def __init__(self, driver, base_url: str, token: str, shots: Path, open_timeout: float = 120):
        self.driver, self.base_url, self.token, self.shots = driver, base_url, token, shots
        self.open_timeout = open_timeout
        self.current: str | None = None  # path of the open document

    # -- documents -------------------------------------------------------------------------------------
    def open(self, path: str) -> dict:
        """Open ``path`` (relative to the server root) by its URL, in a fresh workspace (``reset``), and wait
        until it is loaded (a notebook: every cell rendered and its kernel idle)."""
        self.driver.get(f"{self.base_url}/lab/tree/{path}?token={self.token}&reset")
        self.current = path

        def loaded():
            s = self.driver.execute_script(STATE_JS, path)
            if not s or not s["ready"]:
                return None
            if not s["notebook"]:
                return s
            return s if s["kernel"] == "idle" and s["rendered"] == len(s["cells"]) > 0 else None

        return wait_for(f"{path} to open with an idle kernel", loaded, self.open_timeout)

    def file_browser(self, folder: str = "") -> list[str]:
        """Open the file browser on ``folder`` (relative to the server root): the names it lists."""
        url = f"/lab/tree/{folder}" if folder else "/lab"  # /lab/tree/ alone is "Path Not Found"
        self.driver.get(f"{self.base_url}{url}?token={self.token}&reset")
        self.current = None
        crumbs = "/" + "/".join(p for p in folder.split("/") if p)  # the breadcrumbs' text, spaces removed

        def listed():
            names = self.driver.execute_script(
                "const b = document.querySelector('.jp-BreadCrumbs');"
                "return b && b.textContent.replace(/\\s+/g, '').startsWith(arguments[0]) "
                "&& [...document.querySelectorAll('.jp-DirListing-item .jp-DirListing-itemText')]"
                ".filter(e => e.offsetParent !== null && e.offsetHeight > 0)"  # drawn, not only in the DOM
                ".map(e => e.textContent.trim())", crumbs)
            return names or None

        return wait_for(f"the file browser to list /{folder}", listed, self.open_timeout)

    def state(self) -> dict | None:
        return self.driver.execute_script(STATE_JS, self.current)

    def menu(self, menu: str, command: str) -> None:
        """Click ``menu`` in the menu bar, then its item that runs ``command`` (JupyterLab command id)."""
        self.driver.find_element(
            By.XPATH, f"//div[contains(@class,'lm-MenuBar-itemLabel') and text()='{menu}']").click()
        item = wait_for(f"menu item {command}", lambda: self.driver.find_elements(
            By.CSS_SELECTOR, f".lm-Menu-item[data-command='{command}']"), 10)
        item[0].click()

    def run_all(self, path: str, timeout: float) -> NotebookRun:
        """Open the notebook, Run ▸ Run All Cells, wait until the kernel is idle with no cell queued.

        Run All stops at the first error, so "done" is: idle, no ``[*]`` prompt, and every code cell executed
        or some cell showing an error. The notebook must open without outputs (as committed), so a finished
        run cannot be confused with an old one."""
        start = self.open(path)
        stale = [i for i, c in enumerate(start["cells"]) if c["type"] == "code" and c["count"] is not None]
        assert not stale, f"{path} opened with executed cells {stale}: notebooks are committed without outputs"
        t0 = time.monotonic()
        self.menu("Run", "runmenu:run-all")
        run = NotebookRun(path)

        def finished():
            s = self.state()
            if not s or not s.get("notebook"):
                return None
            if s["kernel"] in ("dead", "unknown"):
                return s
            codes = [c for c in s["cells"] if c["type"] == "code"]
            erred = any(o["type"] == "error" for c in codes for o in c["outputs"])
            all_ran = all(c["count"] is not None for c in codes)
            queued = any("*" in p for p in s["prompts"])
            return s if s["kernel"] == "idle" and not queued and (all_ran or erred) else None

        try:
            s = wait_for(f"Run All of {path} to finish", finished, timeout)
        except LabTimeout as e:
            s, run.problem = self.state() or {}, str(e)
        run.seconds = time.monotonic() - t0
        run.cells, run.kernel = s.get("cells", []), s.get("kernel")
        if run.kernel == "dead":
            run.problem = "the kernel died"
        elif run.problem is None and run.unexecuted and not run.errors:
            run.problem = f"cells {run.unexecuted} never ran"
        return run

    def shutdown_kernel(self) -> None:
        """Kernel ▸ Shut Down Kernel (frees the kernel's memory before the next notebook)."""
        self.menu("Kernel", "kernelmenu:shutdown")
        wait_for("the kernel to shut down", lambda: (self.state() or {}).get("kernel") is None, 30)

    # -- what the page shows ---------------------------------------------------------------------------
    def panel(self):
        """The DOM node of the open document's content (notebook or rendered markdown)."""
        return self.driver.execute_script(f"return {CURRENT} && {CURRENT}.content.node")

    def cell(self, source: str):
        """The DOM node of the one cell of the open notebook whose source contains ``source``."""
        found = self.driver.execute_script(CELL_JS, source)
        if isinstance(found, str):
            raise AssertionError(f"{self.current}: no single cell has {source!r} in its source ({found})")
        return found

    def explorer(self, source: str, timeout: float = 60) -> "Explorer":
        """The explorer widget drawn by the cell whose source contains ``source``, once its view is there."""
        return Explorer(self, self.cell(source), timeout)

    def output_text(self, cell) -> str:
        """The text a cell's outputs show (not its source)."""
        return "\n".join(o.text for o in cell.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output"))

    def output_table(self, node) -> tuple[list[str], list[list[str]]]:
        """The first table under ``node``: its column headings (the index's included) and its rows' cells."""
        table = node.find_element(By.CSS_SELECTOR, "table")
        heads = [h.text for h in table.find_elements(By.CSS_SELECTOR, "thead tr:first-child th")]
        rows = [[c.text for c in r.find_elements(By.CSS_SELECTOR, "th, td")]
                for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        return heads, rows

    def widgets(self, cell) -> list:
        """The widget views a cell's outputs show (empty until the widget manager has rendered them)."""
        return cell.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output .jupyter-widgets")

    def truncated_labels(self, node) -> list[str]:
        return self.driver.execute_script(TRUNCATED_JS, node)

    def wide_tables(self) -> list[dict]:
        """Tables of the open notebook wider than their output area: ``width``, ``room``, ``head``."""
        return self.driver.execute_script(WIDE_TABLES_JS, self.panel())

    def images(self, at_least: int = 0, timeout: float = 20) -> list[dict]:
        """Every ``<img>`` in the open document: ``src`` as written, ``resolved`` (the URL the browser
        fetched), ``width`` (naturalWidth; 0: broken). Returns as soon as at least ``at_least`` images are
        there and all have loaded; else, after ``timeout`` s, what is there then (broken ones included: the
        markdown renderer rewrites relative links after inserting them, so a broken state may be passing)."""
        last: list[dict] = []

        def loaded():
            nonlocal last
            last = self.driver.execute_script(IMAGES_JS, self.panel())
            return len(last) >= at_least and all(i["complete"] and i["width"] > 0 for i in last)

        try:
            wait_for(f"the images of {self.current}", loaded, timeout)
        except LabTimeout:
            pass
        return last

    def slider_table(self) -> tuple[Any, Any, Any]:
        """The first slider widget's handle, its read-out and the HTML widget beside it (its table)."""
        box = self.driver.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .widget-vbox")
        handle = box.find_element(By.CSS_SELECTOR, ".widget-hslider .noUi-handle")
        readout = box.find_element(By.CSS_SELECTOR, ".widget-hslider .widget-readout")
        table = box.find_element(By.CSS_SELECTOR, ".widget-html-content")
        return handle, readout, table

    def drag(self, element, dx: int) -> None:
        """Press the mouse on ``element``, move it ``dx`` pixels sideways, release (a person's drag)."""
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        ActionChains(self.driver).click_and_hold(element).move_by_offset(dx, 0).release().perform()

    # -- screenshots -----------------------------------------------------------------------------------
    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path

    def cell_screenshots(self, folder: str, max_height: int = 15000) -> list[Path]:
        """One PNG per cell that shows output (``cell_NN.png``, NN = the cell's index in the ipynb), taken
        in a window tall enough for the tallest such cell, so nothing is cut at the viewport's edge."""
        cells = self.driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell")
        shown = [(c, f"{folder}/cell_{i:02d}") for i, c in enumerate(cells)
                 if c.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")]
        return self.element_screenshots(shown, max_height)

    def element_screenshots(self, shown: list[tuple[Any, str]], max_height: int = 15000) -> list[Path]:
        """``<shots>/<name>.png`` of each ``(element, name)``, in a window tall enough for the tallest."""
        if not shown:
            return []
        size = self.driver.get_window_size()
        tallest = max(e.size["height"] for e, _ in shown)
        self.driver.set_window_size(size["width"], min(max_height, max(size["height"], tallest + 300)))
        out = []
        try:
            for element, name in shown:
                self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
                path = self.shots / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                element.screenshot(str(path))
                out.append(path)
        finally:
            self.driver.set_window_size(size["width"], size["height"])
        return out


class Explorer:
    """One explorer (``glmd_lib.explore.explorer``: a box of controls above an HTML view) in a cell, driven as
    a person drives it: type into its text box and press Enter, pick from a drop-down, drag a slider."""

    def __init__(self, lab: LabPage, cell, timeout: float = 60):
        self.lab, self.cell = lab, cell
        self.box = wait_for("the explorer's widget to render", lambda: cell.find_elements(
            By.CSS_SELECTOR, ".jp-OutputArea-output .widget-vbox"), timeout)[0]
        wait_for("the explorer's view", lambda: self.text().strip(), timeout)

    def _view(self):
        return self.box.find_element(By.CSS_SELECTOR, ".widget-html-content")

    def text(self) -> str:
        return self._view().text

    def errors(self) -> list[str]:
        """What the view shows in place of its output when rendering raised (glmd_lib.explore.ERROR_CLASS)."""
        return [e.text for e in self.box.find_elements(By.CLASS_NAME, EXPLORER_ERROR)]

    def truncated_labels(self) -> list[str]:
        return self.lab.truncated_labels(self.box)

    def _controls(self, css: str, nth: int):
        found = self.box.find_elements(By.CSS_SELECTOR, css)
        assert len(found) > nth, f"the explorer has {len(found)} controls {css!r}, not {nth + 1}"
        self.lab.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", found[nth])
        return found[nth]

    def type(self, text: str, nth: int = 0) -> None:
        """Select what the ``nth`` text box holds, type ``text`` over it, press Enter."""
        from selenium.webdriver.common.keys import Keys

        box = self._controls(".widget-text input", nth)
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(text, Keys.ENTER)

    def value(self, nth: int = 0) -> str:
        return self._controls(".widget-text input", nth).get_attribute("value")

    def pick(self, option: int | str, nth: int = 0) -> str:
        """Choose ``option`` (its index, or its text) in the ``nth`` drop-down; returns the option's text."""
        from selenium.webdriver.support.select import Select

        menu = Select(self._controls(".widget-dropdown select", nth))
        if isinstance(option, int):
            menu.select_by_index(option)
        else:
            menu.select_by_visible_text(option)
        return menu.first_selected_option.text

    def options(self, nth: int = 0) -> list[str]:
        return [o.text for o in self._controls(".widget-dropdown select", nth).find_elements(By.TAG_NAME, "option")]

    def slide(self, dx: int, nth: int = 0) -> tuple[str, str]:
        """Drag the ``nth`` slider's handle ``dx`` pixels: its read-out before and after."""
        readout = self._controls(".widget-hslider .widget-readout", nth)
        before = readout.text
        self.lab.drag(self._controls(".widget-hslider .noUi-handle", nth), dx)
        wait_for("the slider's read-out to move", lambda: readout.text != before, 30)
        return before, readout.text

    def changed(self, before: str, timeout: float = 120) -> str:
        """Wait until the view shows something other than ``before`` (the kernel recomputed it)."""
        return wait_for("the explorer's view to change", lambda: (t := self.text()) != before and t.strip() and t,
                        timeout)

    def screenshot(self, name: str) -> Path:
        return self.lab.element_screenshots([(self.cell, name)])[0]
