"""Strip outputs and execution counts from the committed notebooks and normalise their metadata.

Usage: python tools/clean_notebooks.py [notebooks/*.ipynb]   (``make clean-notebooks``)
``tests/test_notebooks.py`` fails when a committed notebook still holds outputs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def clean(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    nb.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        tags = cell.metadata.get("tags")
        cell.metadata = {"tags": tags} if tags else {}
    nbformat.validate(nb)
    after = nbformat.writes(nb)
    if after != before:
        path.write_text(after, encoding="utf-8")
        return True
    return False


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted(Path(__file__).resolve().parent.parent.glob("notebooks/*.ipynb"))
    for p in paths:
        if clean(p):
            print(f"cleaned {p}")
