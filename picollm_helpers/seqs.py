"""3seqs: a small deterministic file of integer sequences, one per line.

A model that learns these lines has to pick up a rule from a line's first numbers and continue
it, which makes it the course's sanity check ("0 1 2 3 4" -> "5 6 7 ..."). Families:

  counting      0 1 2 3 4 5 ...   (about half of them start at 0; others at -20..20)
  step          arithmetic with step 2, 3, 4, 5, 10, -1, -2, -3, -5
  fibonacci     a b a+b ...       (small a, b)
  powers_of_two 1 2 4 8 16 ...
  squares       0 1 4 9 16 ...    (from a random k^2)
  zeros         0 0 0 0 ...

Lines hold 8 to 40 numbers, well under 1024 GPT-2 tokens. Regenerate data/3seqs.txt with
`python -m picollm_helpers.seqs`.
"""

from __future__ import annotations

import random
from pathlib import Path

from .files import write_text

# (family, relative frequency)
FAMILIES = [("counting", 35), ("step", 20), ("fibonacci", 15), ("powers_of_two", 10),
            ("squares", 10), ("zeros", 10)]
STEPS = [2, 3, 4, 5, 10, -1, -2, -3, -5]


def _sequence(rng: random.Random, family: str, length: int) -> list[int]:
    if family == "counting":
        start = 0 if rng.random() < 0.5 else rng.randint(-20, 20)
        return list(range(start, start + length))
    if family == "step":
        step, start = rng.choice(STEPS), rng.randint(-10, 20)
        return [start + step * i for i in range(length)]
    if family == "fibonacci":
        a, b = rng.choice([(0, 1), (1, 1), (rng.randint(0, 5), rng.randint(1, 5))])
        out = [a, b]
        while len(out) < length:
            out.append(out[-1] + out[-2])
        return out
    if family == "powers_of_two":
        k = rng.randint(0, 3)
        return [2 ** (k + i) for i in range(min(length, 30))]  # keep numbers short-ish
    if family == "squares":
        k = rng.randint(0, 10)
        return [(k + i) ** 2 for i in range(length)]
    if family == "zeros":
        return [0] * length
    raise ValueError(f"unknown 3seqs family {family!r}; expected one of {[f for f, _ in FAMILIES]}")


def generate_3seqs_with_families(n_lines: int = 10000, seed: int = 0) -> list[tuple[str, str]]:
    """[(family, line), ...]: n_lines deterministic sequences; a prefix of any longer call."""
    if isinstance(n_lines, bool) or not isinstance(n_lines, int) or n_lines < 1:
        raise ValueError(f"n_lines={n_lines!r}: must be an integer >= 1, e.g. n_lines=10000")
    rng = random.Random(f"picollm-3seqs:{seed}")
    names = [f for f, _ in FAMILIES]
    weights = [w for _, w in FAMILIES]
    out = []
    for _ in range(n_lines):
        family = rng.choices(names, weights)[0]
        length = rng.randint(8, 40)
        out.append((family, " ".join(map(str, _sequence(rng, family, length)))))
    return out


def generate_3seqs(n_lines: int = 10000, seed: int = 0) -> list[str]:
    """n_lines space-separated integer sequences (see the module docstring for the families)."""
    return [line for _, line in generate_3seqs_with_families(n_lines, seed)]


def default_3seqs_path() -> Path:
    from .config import repo_root

    return repo_root() / "data" / "3seqs.txt"


def write_3seqs(path=None, n_lines: int = 10000, seed: int = 0) -> Path:
    """Write the sequences to path (default data/3seqs.txt), atomically; return the path."""
    path = Path(path) if path is not None else default_3seqs_path()
    return write_text(path, "\n".join(generate_3seqs(n_lines, seed)) + "\n")


if __name__ == "__main__":
    print(f"wrote {write_3seqs()}")
