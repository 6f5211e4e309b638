"""Lesson 05's exercise: the memorization measure, the share of a text's n-grams found in a reference set."""

import random

from ._core import Case, Check


def ngram_share(samples, reference, n):
    """The kit's reference: of all n-grams (runs of n consecutive tokens) of the samples, counted
    with repeats and pooled over the samples, the share that occurs in some reference example.

    samples, reference: lists of token-id lists. An n-gram of the reference never spans two of its
    examples. 0.0 when the samples have no n-gram (all shorter than n).
    """
    found = {tuple(ex[i:i + n]) for ex in reference for i in range(len(ex) - n + 1)}
    grams = [tuple(s[i:i + n]) for s in samples for i in range(len(s) - n + 1)]
    return sum(g in found for g in grams) / max(1, len(grams))


def _random_case(seed, vocab, n_ref, n_samples, length, n):
    rng = random.Random(seed)
    reference = [[rng.randrange(vocab) for _ in range(rng.randint(n, length))] for _ in range(n_ref)]
    samples = []
    for _ in range(n_samples):
        if rng.random() < 0.5:  # a sample that copies part of a reference example, then goes its own way
            ex = rng.choice(reference)
            start = rng.randrange(len(ex))
            copied = ex[start:start + rng.randint(1, length)]
            samples.append(copied + [rng.randrange(vocab) for _ in range(rng.randint(0, length))])
        else:
            samples.append([rng.randrange(vocab) for _ in range(rng.randint(0, length))])
    return samples, reference, n


def _cases():
    cases = [
        Case("the lesson's toy: trigrams of [0, 3, 4, 5, 6, 21, 22, 9] against [[1..9], [20, 21, 22, 23]]",
             lambda: ([[0, 3, 4, 5, 6, 21, 22, 9]], [[1, 2, 3, 4, 5, 6, 7, 8, 9], [20, 21, 22, 23]], 3)),
        Case("the last n-gram of a sample counts too: [1, 2, 3] copied whole, n=3",
             lambda: ([[1, 2, 3]], [[1, 2, 3]], 3)),
        Case("an n-gram may not span two reference examples: [8, 9, 20] against [[7, 8, 9], [20, 21]]",
             lambda: ([[8, 9, 20], [7, 8, 9]], [[7, 8, 9], [20, 21]], 3)),
        Case("repeats count every time: [5, 5, 5, 5, 1] has bigrams (5,5) x3 and (5,1), reference [[5, 5]]",
             lambda: ([[5, 5, 5, 5, 1]], [[5, 5]], 2)),
        Case("pooled over samples, not a mean of per-sample shares: a long copied sample and a short new one",
             lambda: ([[1, 2, 3, 4, 5, 6, 7], [9, 9]], [[1, 2, 3, 4, 5, 6, 7]], 2)),
        Case("every sample shorter than n: no n-gram at all, share 0.0",
             lambda: ([[1, 2], [3]], [[1, 2, 3]], 3)),
    ]
    cases += [Case(f"random token lists (vocab {v}, {r} reference examples, {s} samples, n={n})",
                   lambda seed=seed, v=v, r=r, s=s, length=length, n=n: _random_case(seed, v, r, s, length, n))
              for seed, (v, r, s, length, n) in enumerate([(5, 10, 6, 12, 2), (8, 20, 10, 30, 3),
                                                          (4, 30, 20, 40, 4), (50, 40, 20, 60, 8)])]
    return cases


check_ngram_share = Check(
    "ngram_share", ngram_share, _cases, atol=1e-12, rtol=0.0)
