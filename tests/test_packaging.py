"""environment.yml and pyproject.toml must list the same packages."""
import re
import tomllib

import yaml
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec.strip(), maxsplit=1)[0].lower()


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_names = {_name(s) for s in project["dependencies"]}
    pip_names |= {_name(s) for s in project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [dep for dep in env["dependencies"] if isinstance(dep, str)]
    conda_names = {CONDA_NAMES.get(_name(s), _name(s)) for s in conda} - {"python", "pip"}
    assert conda_names == pip_names


def test_public_names_resolve_lazily():
    import picollm_helpers

    assert "RunConfig" in picollm_helpers.__all__
    assert picollm_helpers.RunConfig.__name__ == "RunConfig"
