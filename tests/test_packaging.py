"""environment.yml and pyproject.toml must list the same packages, constraints.txt must pin each of
them at a version both allow, and make setup must install with it."""
import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from picollm_helpers import doctor

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[;]", spec.strip(), maxsplit=1)[0].lower()


def _applies_to_conda(spec: str) -> bool:
    """environment.yml pins Python 3.11: a requirement whose marker excludes it is not listed there."""
    _, _, marker = spec.partition(";")
    return not marker.strip() or Marker(marker).evaluate({"python_version": "3.11", "python_full_version": "3.11.0"})


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["dev"]
    pip_names = {_name(s) for s in specs if _applies_to_conda(s)}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [dep for dep in env["dependencies"] if isinstance(dep, str)]
    conda_names = {CONDA_NAMES.get(_name(s), _name(s)) for s in conda} - {"python", "pip"}
    assert conda_names == pip_names


def _constraints() -> dict[str, list[tuple[str, str]]]:
    """{canonical name: [(pinned version, marker)]} of constraints.txt (a name may have a line per Python)."""
    pins: dict[str, list[tuple[str, str]]] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        spec, _, marker = line.partition(";")
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", spec.strip())
        assert m, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        pins.setdefault(canonicalize_name(m.group(1)), []).append((m.group(2), marker.strip()))
    return pins


def _tested_python() -> dict:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    version = python.split("=", 1)[1]
    assert tuple(map(int, version.split("."))) == doctor.TESTED_PYTHON   # the doctor tells the same Python
    return {"python_version": version, "python_full_version": f"{version}.0"}


def test_constraints_pin_every_declared_package_within_its_specifier():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [CONDA_NAMES.get(_name(s), _name(s)) + s[len(_name(s)):] for s in env["dependencies"]
             if isinstance(s, str) and _name(s) not in ("python", "pip")]
    pins, tested = _constraints(), _tested_python()
    for spec in specs + conda:
        req = Requirement(spec)
        lines = pins.get(canonicalize_name(req.name))
        assert lines, f"{req.name} ({spec}) is not pinned in constraints.txt"
        for version, _ in lines:
            assert req.specifier.contains(version, prereleases=True), f"constraints.txt pins {req.name}=={version}, " \
                                                                      f"outside {spec}"
        applies = not req.marker or req.marker.evaluate(tested)
        on_tested = [v for v, marker in lines if not marker or Marker(marker).evaluate(tested)]
        assert len(on_tested) == (1 if applies else 0), (req.name, lines)   # one pin where the kit is tested
    # torch: the version the Makefile installs first, any build of it (2.13.0+cpu satisfies ==2.13.0)
    makefile_torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert pins["torch"] == [(makefile_torch, "")] and SpecifierSet(f"=={makefile_torch}").contains("2.13.0+cpu")


def test_make_lock_writes_this_constraints_file(tmp_path):
    """constraints.txt is what `make lock` writes from an environment at its pins (the tested one)."""
    packages = doctor.check_packages()
    if packages.status is not True:
        pytest.skip(f"this environment is not at the pins: {packages.detail}")
    copy = tmp_path / "constraints.txt"
    shutil.copy(ROOT / "constraints.txt", copy)     # lock keeps the pins of packages not installed here (tomli)
    doctor.lock(copy)
    assert copy.read_text() == (ROOT / "constraints.txt").read_text()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("args, pinned", [([], True), (["CONSTRAINTS="], False), (["PICOLLM_UNPINNED=1"], False),
                                          (["PICOLLM_UNPINNED=0"], True)])
def test_make_setup_installs_with_the_constraints_unless_told_not_to(args, pinned):
    env = {k: v for k, v in os.environ.items() if k != "PICOLLM_UNPINNED"}
    out = subprocess.run(["make", "-n", "-B", "setup", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    installs = [line for line in out.splitlines() if " -m pip install " in line and "--upgrade pip" not in line]
    assert len(installs) == 2 and '"torch==2.13.0"' in installs[0] and '-e ".[dev]"' in installs[1]   # torch first
    assert all(("-c constraints.txt" in line) == pinned for line in installs)


# import name -> distribution name, where they differ
IMPORT_NAMES = {"yaml": "pyyaml", "IPython": "ipython", "picollm_helpers": "picollm-helpers",
                "fla": "flash-linear-attention"}


def _imported_top_level_names(code: str, notebook: bool = False) -> set[str]:
    if notebook:  # IPython magics and shell escapes are not Python
        code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_every_package_the_kit_imports_is_declared():
    import json

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(s) for s in project["dependencies"]}
    declared |= {_name(s) for extra in project["optional-dependencies"].values() for s in extra}
    declared.add(project["name"])
    names = set()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            if cell["cell_type"] == "code":
                names |= _imported_top_level_names("".join(cell["source"]), notebook=True)
    for py in [*(ROOT / "picollm_helpers").rglob("*.py"), *(ROOT / "tests").glob("*.py"),
               *(ROOT / "tests_browser").glob("*.py")]:
        names |= _imported_top_level_names(py.read_text(encoding="utf-8"))
    local = {p.stem for p in (ROOT / "tests").glob("*.py")} | {p.stem for p in (ROOT / "tests_browser").glob("*.py")}
    third_party = {n for n in names if n not in sys.stdlib_module_names and n not in local}
    missing = sorted(n for n in third_party if IMPORT_NAMES.get(n, n).lower() not in declared)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_public_names_resolve_lazily():
    import picollm_helpers

    assert "RunConfig" in picollm_helpers.__all__
    assert picollm_helpers.RunConfig.__name__ == "RunConfig"


def _package_imports() -> dict[str, set[str]]:
    """{module: modules of the package it imports}, counting imports inside functions too."""
    pkg = ROOT / "picollm_helpers"
    graph = {}
    for py in pkg.rglob("*.py"):
        parts = list(py.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        name = ".".join(parts)
        deps = set()
        for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts if is_pkg else parts[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # `from . import data` imports a module
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if (ROOT / Path(*sub.split("."))).with_suffix(".py").exists()
                             or (ROOT / Path(*sub.split("."))).is_dir() else target)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d.startswith("picollm_helpers") and d != name}
    return graph


def test_the_package_imports_one_way():
    graph = _package_imports()
    parents = lambda m: {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)}
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if d in parents(m):
                continue  # a submodule may use its own package's names
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
