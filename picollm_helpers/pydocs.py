"""The offline stand-in for WikiText: prose from Python's own documentation.

With no hub, `data.load_wiki` still needs long-form, real English. Every Python ships some: the
language reference (pydoc_data.topics) and the docstrings of the standard library. This module
turns them into one deterministic list of prose lines:

    python_docs_lines()           the lines, collected in this process
    python_docs_in_subprocess()   the same lines from a fresh interpreter (what data.load_wiki uses)

Neighbours: `data` (the loaders) calls it and caches its lines with the other texts; this module
imports nothing of the kit but `config`.
"""

from __future__ import annotations

import json
import os
import re

from .config import repo_root

# Modules never imported for their docstrings: they act on import (open a browser, print, change
# the terminal) or drag in a GUI toolkit.
DOC_MODULES_SKIPPED = {"antigravity", "this", "turtle", "turtledemo", "tkinter", "idlelib", "readline",
                       "rlcompleter", "lib2to3", "ensurepip", "venv", "pydoc_data", "msilib", "winreg",
                       "winsound", "msvcrt", "nturl2path", "ntpath", "nt", "test", "tests", "__main__"}


def _prose_paragraphs(text: str) -> list[str]:
    """Paragraphs of running English in a docstring or reference page, each made one line.
    Code and grammar blocks, doctests, tables and headings are dropped."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [l.strip() for l in para.splitlines()]
        if not lines or any(l.startswith((">>>", "...", "+-", "|", "==", "**", "--")) for l in lines):
            continue
        line = " ".join(lines)
        words = line.split()
        letters = sum(ch.isalpha() or ch == " " for ch in line)
        if (len(words) >= 6 and letters >= 0.8 * len(line) and "::=" not in line
                and line[0].isupper() and line[-1] in ".:;)?!"):
            out.append(line)
    return out


def _doc_modules() -> list[str]:
    """The standard library's public modules, and their packages' direct submodules, sorted."""
    import importlib.util
    import pkgutil
    import sys

    names = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in DOC_MODULES_SKIPPED:
            continue
        names.append(top)
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.submodule_search_locations:
            names += sorted(f"{top}.{m.name}" for m in pkgutil.iter_modules(spec.submodule_search_locations)
                            if not m.name.startswith("_") and m.name not in DOC_MODULES_SKIPPED)
    return names


def python_docs_lines() -> list[str]:
    """Deterministic prose lines from Python's language reference (pydoc_data) and the docstrings
    of the standard library's modules, classes and functions (a fixed, sorted list)."""
    import contextlib
    import importlib
    import inspect
    import io
    import warnings
    from pydoc_data.topics import topics

    lines: list[str] = []
    seen: set[int] = set()
    for name in sorted(topics):
        lines += _prose_paragraphs(topics[name])
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet[0], quiet[1]:
        warnings.simplefilter("ignore")
        for modname in _doc_modules():
            try:
                mod = importlib.import_module(modname)
            except BaseException:  # a module this Python lacks or cannot import here
                continue
            docs = [inspect.getdoc(mod) or ""]
            for attr in sorted(vars(mod)):
                obj = getattr(mod, attr, None)
                if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__ or id(obj) in seen:
                    continue
                seen.add(id(obj))
                if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
                    docs.append(inspect.getdoc(obj) or "")
                if inspect.isclass(obj):
                    docs += [inspect.getdoc(m) or "" for a, m in sorted(vars(obj).items())
                             if not a.startswith("_") and callable(m)]
            for doc in docs:
                lines += _prose_paragraphs(doc)
    return list(dict.fromkeys(lines))  # drop repeats, keep the first-seen order


def python_docs_in_subprocess() -> list[str]:
    """python_docs_lines() computed in a fresh interpreter: importing hundreds of standard-library
    modules for their docstrings then leaves the caller's process (a notebook kernel) untouched."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root()), os.environ.get("PYTHONPATH", "")]))
    try:
        out = subprocess.run([sys.executable, "-m", "picollm_helpers.pydocs", "--python-docs"], env=env,
                             capture_output=True, check=True, timeout=300, cwd=repo_root()).stdout
        return json.loads(out)
    except (subprocess.SubprocessError, OSError, ValueError):
        return python_docs_lines()  # e.g. no subprocesses allowed: collect them here instead


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--python-docs"]:  # what python_docs_in_subprocess runs
        # Importing torch replaces inspect.getfile with torch.package's wrapper, whose docstring is
        # then not the standard library's. Load it here too, so these lines are the ones a process
        # that has torch (a notebook kernel, the fallback above) collects.
        import torch  # noqa: F401

        sys.stdout.write(json.dumps(python_docs_lines()))
