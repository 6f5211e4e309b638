"""Lesson 05's exercises: the memorization measure (the share of a text's n-grams found in a reference set),
the epoch early stopping keeps, and the train and test losses of a memorising bigram table."""

import math
import random
from collections import Counter

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


# Early stopping ---------------------------------------------------------------------------------

def early_stopping_epoch(test_loss, patience=None):
    """The kit's reference: the epoch (1-based) whose model early stopping keeps. `test_loss`: one test
    loss per epoch, epoch 1 first. Training stops once `patience` epochs in a row have not lowered the
    best test loss (a tie is no improvement); the model kept is the best one seen until then, the first
    epoch to reach that loss. patience=None never stops: the epoch of the lowest test loss."""
    best = 0
    for epoch in range(1, len(test_loss)):
        if test_loss[epoch] < test_loss[best]:
            best = epoch
        elif patience is not None and epoch - best >= patience:
            break
    return best + 1


def _early_cases():
    cases = [
        Case("a U-shaped curve, no patience: the lowest epoch", lambda: ([5.0, 4.0, 3.0, 3.5, 4.0], None)),
        Case("still falling at the last epoch: the last epoch", lambda: ([3.0, 2.5, 2.0, 1.9], None)),
        Case("a tie: the first epoch that reached the lowest loss", lambda: ([3.0, 2.0, 2.5, 2.0, 2.2], None)),
        Case("patience 2 stops at a bump, before a lower loss later", lambda: ([3.0, 2.0, 2.1, 2.2, 1.0], 2)),
        Case("patience 3 rides over the same bump", lambda: ([3.0, 2.0, 2.1, 2.2, 1.0], 3)),
        Case("patience 1: the first epoch that does not improve ends training", lambda: ([3.0, 2.0, 2.0, 1.0], 1)),
        Case("the first epoch is the best", lambda: ([1.0, 2.0, 3.0], None)),
        Case("one epoch", lambda: ([4.2], 2)),
    ]
    rng = random.Random(5)
    for patience in (None, 1, 2, 3, 5, 8):
        curve = [3.0 - 0.3 * e + 0.02 * e * e + rng.uniform(-0.15, 0.15) for e in range(20)]
        cases.append(Case(f"a noisy U-shaped curve of 20 epochs, patience {patience}",
                          lambda c=curve, p=patience: (c, p)))
    return cases


check_early_stopping_epoch = Check(
    "early_stopping_epoch", early_stopping_epoch, _early_cases, atol=0.0, rtol=0.0)


# A memorising bigram table ------------------------------------------------------------------------

def bigram_losses(train, test, vocab_size, alpha):
    """The kit's reference: the losses of a bigram table counted on `train` (lists of token ids), as a pair
    (train loss, test loss) in nats per predicted token. p(b | a) = (count(a, b) + alpha) /
    (count(a) + alpha * vocab_size), where count(a, b) counts the training pairs "a then b" and count(a) the
    training pairs that start with a. Pairs never span two sequences; each loss is the mean of -log p(b | a)
    over every pair of that set, pooled over its sequences."""
    pairs = Counter((a, b) for seq in train for a, b in zip(seq, seq[1:]))
    starts = Counter(a for seq in train for a in seq[:-1])

    def loss(seqs):
        test_pairs = [(a, b) for seq in seqs for a, b in zip(seq, seq[1:])]
        return -sum(math.log((pairs[a, b] + alpha) / (starts[a] + alpha * vocab_size))
                    for a, b in test_pairs) / len(test_pairs)

    return loss(train), loss(test)


def _bigram_random(seed, vocab, n_train, n_test, length, alpha):
    rng = random.Random(seed)

    def seqs(n):
        return [[rng.randrange(vocab) for _ in range(rng.randint(2, length))] for _ in range(n)]
    return seqs(n_train), seqs(n_test), vocab, alpha


def _bigram_cases():
    cases = [
        Case("one training sequence 0 1 0 1, test 1 0, vocabulary 2, alpha 1",
             lambda: ([[0, 1, 0, 1]], [[1, 0]], 2, 1.0)),
        Case("a pair the table never saw: train 0 1 2, test 2 0, vocabulary 3, alpha 0.5",
             lambda: ([[0, 1, 2]], [[2, 0]], 3, 0.5)),
        Case("no pair across two sequences: train [0, 1] and [2, 3], test [1, 2], vocabulary 4, alpha 0.1",
             lambda: ([[0, 1], [2, 3]], [[1, 2]], 4, 0.1)),
        Case("pooled over sequences: a long and a short test sequence, vocabulary 3, alpha 1",
             lambda: ([[0, 1, 2, 0, 1, 2]], [[0, 1, 2, 0, 1, 2, 0], [2, 2]], 3, 1.0)),
        Case("a nearly memorising table (alpha 0.01): train 0 1 2 1 0, test 0 2 1, vocabulary 3",
             lambda: ([[0, 1, 2, 1, 0]], [[0, 2, 1]], 3, 0.01)),
    ]
    cases += [Case(f"random sequences (vocabulary {v}, alpha {a_})",
                   lambda s=s, v=v, a_=a_: _bigram_random(s, v, 8, 5, 30, a_))
              for s, (v, a_) in enumerate([(5, 1.0), (12, 0.1), (30, 0.01), (7, 2.0)])]
    return cases


check_bigram_losses = Check(
    "bigram_losses", bigram_losses, _bigram_cases, atol=1e-9, rtol=1e-9)
