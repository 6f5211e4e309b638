"""instructor/constraints.txt pins exactly what the instructor extra adds to constraints.txt, at the versions
installed here (the ones the nbgrader round trip passes with)."""

import re
import sys
from importlib import metadata

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from picollm_helpers.config import repo_root

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = repo_root()


def _pins(path):
    """{canonical name: version} of the lines that apply to this Python."""
    pins = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        spec, _, marker = line.partition(";")
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", spec.strip())
        assert m, f"{path.name}: {line!r} is not an exact pin (name==version)"
        if not marker.strip() or Marker(marker).evaluate():
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def _pulled_in(roots):
    """Every distribution the requirements roots pull in, transitively, as installed here: {name: version}."""
    seen, stack = {}, [(Requirement(r), set()) for r in roots]
    while stack:
        req, extras = stack.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        dist = metadata.distribution(req.name)
        seen[name] = dist.version.split("+", 1)[0]
        stack += [(Requirement(r), set(req.extras)) for r in dist.requires or []]
    return seen


def test_the_instructor_constraints_pin_what_the_extra_adds_and_nothing_else():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["instructor"]
    kit, mine = _pins(ROOT / "constraints.txt"), _pins(ROOT / "instructor" / "constraints.txt")
    assert not set(kit) & set(mine), f"pinned in both files: {sorted(set(kit) & set(mine))}"
    installed = _pulled_in(extra)
    added = {name: v for name, v in installed.items() if name not in kit}
    assert added == mine, "instructor/constraints.txt should pin exactly what the extra adds, as installed"
    differ = {name: (v, kit[name]) for name, v in installed.items() if name in kit and kit[name] != v}
    assert not differ, f"installed (version, pin) that differ from constraints.txt: {differ}"
