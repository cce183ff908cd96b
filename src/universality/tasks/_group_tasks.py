"""Group composition tasks (Chughtai, Chan, Nanda 2023, "A Toy Model of Universality").

A task maps every pair (a, b) of group elements to the element a word in a and b evaluates to:
"a b" is composition a*b (the paper's task); "a b a^-1" is conjugation; "b a b^-1 a^-1" a
commutator. Pairs enumerate all of G x G in a-major order, so any per-pair tensor reshapes to
[order, order] with row a and column b:

| field    | shape            | meaning                                             |
|----------|------------------|-----------------------------------------------------|
| `left`   | int64 [pairs]    | a = pair // order                                   |
| `right`  | int64 [pairs]    | b = pair % order                                    |
| `target` | int64 [pairs]    | index of word(a, b) in `group.table`                |
| `train`  | bool [pairs]     | train split: exactly round(train_fraction * pairs)  |

>>> from universality.groups import make_group
>>> task = word_task(make_group("S3"), "a b a^-1", train_fraction=0.5, seed=0)
>>> task.target.shape, int(task.train.sum())
(torch.Size([36]), 18)
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UniversalityError
from ..groups import Group

__all__ = ["GroupTask", "composition_task", "word_task", "parse_word"]

_TOKEN = re.compile(r"([A-Za-z]+)(?:\^([+-]?\d{1,18}))?")  # exponents below 10^18
_EXAMPLE = "write letters a and b separated by spaces, each with an optional ^k, e.g. 'a b a^-1' or 'a^2 b'"


@dataclass(frozen=True, eq=False)
class GroupTask:
    """Every pair (a, b) of `group`, its target word(a, b), and the train split (see module table)."""

    group: Group
    left: torch.Tensor  # int64 [pairs]
    right: torch.Tensor  # int64 [pairs]
    target: torch.Tensor  # int64 [pairs]
    train: torch.Tensor  # bool [pairs]
    word: str  # normalised: single spaces, "a^1" written "a"
    train_fraction: float
    seed: int  # the split's seed


def composition_task(group: Group, train_fraction: float, seed: int) -> GroupTask:
    """The paper's task: target = a*b, train on a seeded `train_fraction` of the pairs."""
    return word_task(group, "a b", train_fraction, seed)


def word_task(group: Group, word: str, train_fraction: float, seed: int) -> GroupTask:
    """Target = `word` evaluated at (a, b) for every pair; a seeded split of the pairs.

    1. parse the word (`parse_word`) and check the fraction, before any table lookup;
    2. evaluate left to right over all pairs at once: result = result * letter^k;
    3. split: the first round(train_fraction * pairs) pairs of a seeded permutation are train.
    """
    letters = parse_word(word)
    n = group.order
    pairs = n * n
    n_train = _train_size(train_fraction, pairs)
    # 2) a, b [pairs] in a-major order; result [pairs] starts at the identity
    table, inverse = np.asarray(group.table, dtype=np.int64), np.asarray(group.inverse, dtype=np.int64)
    a, b = np.divmod(np.arange(pairs, dtype=np.int64), n)
    result = np.full(pairs, group.identity, dtype=np.int64)
    for letter, power in letters:
        result = table[result, _power(a if letter == "a" else b, power, table, inverse, group.identity)]
    # 3) the split
    train = np.zeros(pairs, dtype=bool)
    train[np.random.default_rng(seed).permutation(pairs)[:n_train]] = True
    return GroupTask(group=group, left=torch.from_numpy(a), right=torch.from_numpy(b),
                     target=torch.from_numpy(result), train=torch.from_numpy(train),
                     word=" ".join(_format(letter, power) for letter, power in letters),
                     train_fraction=float(train_fraction), seed=seed)


def parse_word(word: str) -> list[tuple[str, int]]:
    """Tokens of `word` as (letter, exponent) pairs.

    >>> parse_word("b a b^-1 a^-1")
    [('b', 1), ('a', 1), ('b', -1), ('a', -1)]
    """
    if not isinstance(word, str) or not word.strip():
        raise UniversalityError(f"word {word!r} is empty; {_EXAMPLE}")
    letters = []
    for token in word.split():
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise UniversalityError(f"word {word!r}: token {token!r} is malformed; {_EXAMPLE}")
        name = match[1]
        if len(name) > 1 and set(name) <= {"a", "b"}:
            raise UniversalityError(f"word {word!r}: token {token!r} joins letters; separate them by spaces "
                                    f"({' '.join(name)!r})")
        if name not in ("a", "b"):
            raise UniversalityError(f"word {word!r}: token {token!r} uses letter {name!r}; the only letters are "
                                    f"a and b, e.g. 'a b a^-1'")
        letters.append((name, 1 if match[2] is None else int(match[2])))
    return letters


def _train_size(train_fraction: float, pairs: int) -> int:
    """round(train_fraction * pairs), checked to leave at least one train and one test pair."""
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, numbers.Real) or not 0 < train_fraction < 1:
        raise UniversalityError(f"train_fraction must be a number strictly between 0 and 1, got {train_fraction!r}")
    n_train = round(train_fraction * pairs)
    if not 0 < n_train < pairs:
        raise UniversalityError(f"train_fraction {train_fraction} of {pairs} pairs gives {n_train} train pairs; "
                                f"pick a fraction that leaves at least one train and one test pair")
    return n_train


def _power(x: np.ndarray, k: int, table: np.ndarray, inverse: np.ndarray, identity: int) -> np.ndarray:
    """x^k elementwise for element indices x [pairs], by repeated squaring (k may be negative)."""
    if k < 0:
        x, k = inverse[x], -k
    result = np.full_like(x, identity)
    while k:
        if k & 1:
            result = table[result, x]
        x, k = table[x, x], k >> 1
    return result


def _format(letter: str, power: int) -> str:
    return letter if power == 1 else f"{letter}^{power}"

