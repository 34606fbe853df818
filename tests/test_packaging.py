"""environment.yml (conda) and pyproject.toml (pip) must name the same packages and pins."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_reqs = [r for r in pip_section if not r.startswith("-e")]
    assert {_name(r): r for r in pip_reqs} == {_name(r): r for r in conda_reqs}
    assert "torch==2.13.0" in pip_reqs  # the exact pin that takes the local CPU wheel
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])
