"""Notebook hygiene: no committed outputs, one parameters cell that mirrors the config class, set up by start()."""
import ast
import re

import nbformat
import pytest

from glmd_lib.pipeline import NOTEBOOK_DIR, config_classes

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS][:1] == ["00_overview.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; run `make clean-notebooks`"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_single_parameters_cell_mirrors_config(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
    assigned = {}
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign), f"{path.name}: the parameters cell holds only assignments"
        assigned[node.targets[0].id] = ast.literal_eval(node.value)
    cls = config_classes().get(path.stem)
    assert cls is not None, f"{path.name} has no config class (glmd_lib/configs.py, attribute `notebook`)"
    assert len(assigned) == len(set(assigned))
    missing, extra = set(cls.field_names()) - set(assigned), set(assigned) - set(cls.field_names())
    assert not missing and not extra, f"{path.name} vs {cls.__name__}: missing {missing}, not in the config {extra}"
    assert all(v is None for v in assigned.values()), "None means 'the profile default'"
    assert {"run_dir", "profile", "seed"} <= set(assigned)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_reads_every_parameter_with_its_help(path):
    """``papermill --help-notebook`` lists each parameter with its comment as help (papermill gives up on a line,
    with a warning in every run, when its comment holds an ``=``)."""
    from papermill.translators import PythonTranslator

    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = [node.targets[0].id for node in ast.parse(cell.source).body]
    found = PythonTranslator.inspect(cell)
    assert [p.name for p in found] == names, f"{path.name}: papermill cannot read {set(names) - {p.name for p in found}}"
    assert all(p.help for p in found), f"{path.name}: parameters without a comment: {[p.name for p in found if not p.help]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_set_up_by_start_right_after_the_parameters(path):
    """The cell after the parameters is the one set-up: ``cfg = start(<its config class>, globals())``."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    at = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    cls = config_classes()[path.stem]
    assert at + 1 < len(code) and re.search(rf"^cfg = start\({cls.__name__}, globals\(\)[,)]",
                                            code[at + 1].source, re.M), \
        f"{path.name}: the cell after the parameters should set up with cfg = start({cls.__name__}, globals())"
