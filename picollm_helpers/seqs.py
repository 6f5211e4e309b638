"""3seqs: a small deterministic file of integer sequences, one per line, as the pico-llm course has it.

A model that learns these lines has to pick up a rule from a line's first numbers and continue
it, which makes it the course's sanity check ("0 1 2 3 4" -> "5 6 7 ..."). The families, their
shares, start ranges and lengths follow the file pico-llm students are handed:

  counting       60.5%   n n+1 n+2 ...            start n anywhere in -10..100
  fibonacci      14.7%   a b a+b ...              from one of its first four positions: 0 1, 1 1, 1 2, 2 3
  squares        10.4%   k^2 (k+1)^2 ...          k in 0..20
  powers_of_two  10.0%   1 2 4 8 ... or 2 4 8 ...
  zeros           4.4%   0 0 0 ...

10,000 lines of 12 to 40 numbers (uniform, median 26). The shares are exact: every block of
10,000 lines holds 6,050 counting lines, 1,470 Fibonacci, 1,040 squares, 1,000 powers of two and
440 zeros, in a seeded shuffled order. Regenerate data/3seqs.txt with `python -m picollm_helpers.seqs`.
"""

from __future__ import annotations

import random
from pathlib import Path

from .files import write_text

# (family, lines per BLOCK lines): the course file's shares, exactly
BLOCK = 10000
FAMILIES = [("counting", 6050), ("fibonacci", 1470), ("squares", 1040), ("powers_of_two", 1000),
            ("zeros", 440)]
MIN_LEN, MAX_LEN = 12, 40
COUNTING_STARTS = (-10, 100)
FIBONACCI_STARTS = [(0, 1), (1, 1), (1, 2), (2, 3)]
SQUARE_STARTS = (0, 20)        # the line starts at k^2, k in this range
POWER_STARTS = [1, 2]


def _sequence(rng: random.Random, family: str, length: int) -> list[int]:
    if family == "counting":
        start = rng.randint(*COUNTING_STARTS)
        return list(range(start, start + length))
    if family == "fibonacci":
        out = list(rng.choice(FIBONACCI_STARTS))
        while len(out) < length:
            out.append(out[-1] + out[-2])
        return out
    if family == "squares":
        k = rng.randint(*SQUARE_STARTS)
        return [(k + i) ** 2 for i in range(length)]
    if family == "powers_of_two":
        start = rng.choice(POWER_STARTS)
        return [start * 2 ** i for i in range(length)]
    if family == "zeros":
        return [0] * length
    raise ValueError(f"unknown 3seqs family {family!r}; expected one of {[f for f, _ in FAMILIES]}")


def generate_3seqs_with_families(n_lines: int = 10000, seed: int = 0) -> list[tuple[str, str]]:
    """[(family, line), ...]: n_lines deterministic sequences; a prefix of any longer call.

    Each block of 10,000 lines has the families in exactly the course file's shares, shuffled."""
    if isinstance(n_lines, bool) or not isinstance(n_lines, int) or n_lines < 1:
        raise ValueError(f"n_lines={n_lines!r}: must be an integer >= 1, e.g. n_lines=10000")
    rng = random.Random(f"picollm-3seqs-course:{seed}")
    out: list[tuple[str, str]] = []
    while len(out) < n_lines:
        plan = [family for family, count in FAMILIES for _ in range(count)]
        rng.shuffle(plan)
        for family in plan[:n_lines - len(out)]:
            length = rng.randint(MIN_LEN, MAX_LEN)
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
