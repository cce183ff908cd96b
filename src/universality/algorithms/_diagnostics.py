"""Clock or pizza? Zhong et al. 2023's diagnostics for a modular-addition (C_n) transformer.

Zhong, Liu, Tegmark, Andreas 2023, "The Clock and the Pizza: Two Stories in Mechanistic Explanation of
Neural Networks" (arXiv 2306.17844). Both algorithms put the residues on circles (the same Fourier key
frequencies); they differ in how the two circles are combined:
- Clock (Nanda et al. 2023): angles add, cos(w(a + b - c)); the logits depend on a + b only, and the two
  inputs enter asymmetrically (multiplied through attention).
- Pizza: the midpoint (E[a] + E[b]) / 2 of the two circle points is read off; the logits are
  |cos(w(a - b)/2)| cos(w(a + b - c)), so they depend on the distance a - b, and the two inputs enter
  symmetrically (constant attention adds them).

The definitions follow the authors' code (fjzzq2002/pizza, `code/eval-main.ipynb`):

| function                   | authors' cell           | value                                              |
|----------------------------|-------------------------|----------------------------------------------------|
| `gradient_symmetricity`    | "Gradient Symmetricity" | mean over 100 (a, b, c) of cos(dQ_c/dE[a], dQ_c/dE[b]) |
| `distance_irrelevance`     | "Distance Irrelevance"  | mean_d std_s L[s, d] / std L, L = correct logits  |
| `embedding_key_frequencies`| (Nanda et al. 2023)     | Fourier frequencies holding the embedding's norm   |
| `classify_algorithm`       | (thresholds: see `_defaults`) | "clock", "pizza" or "mixed"                  |

Shapes: Q logits [n^2 pairs, n]; E the token embedding [n + 1, d_model] (row n is "="); L [n, n].
Everything is read in float64 except the gradient, taken through the model's own float32 forward.

>>> from universality.groups import make_group
>>> from universality.models import GroupTransformer
>>> model = GroupTransformer(7, d_model=16, n_heads=2, d_head=8, d_mlp=32, attention_rate=0.0)
>>> round(gradient_symmetricity(model, make_group("C7")), 6)  # constant attention: E[a], E[b] enter as a sum
1.0
>>> classify_algorithm(0.994, 0.17), classify_algorithm(0.33, 0.85), classify_algorithm(0.99, 0.8)
('pizza', 'clock', 'mixed')
"""

from __future__ import annotations

import math
import random
from typing import Literal

import numpy as np
import torch

from .._defaults import CLOCK_MIN_DISTANCE_IRRELEVANCE, PIZZA_MAX_DISTANCE_IRRELEVANCE, PIZZA_MIN_SYMMETRICITY
from ..errors import UniversalityError, short_repr
from ..groups import Group
from ..irreps import fourier_key_frequencies
from ..irreps._fourier import FREQUENCY_THRESHOLD
from ..models import GroupTransformer

__all__ = ["Algorithm", "cyclic_order", "gradient_symmetricity", "distance_irrelevance", "correct_logits",
           "embedding_key_frequencies", "classify_algorithm", "GRADIENT_SAMPLES", "GRADIENT_SEED"]

Algorithm = Literal["clock", "pizza", "mixed"]

GRADIENT_SAMPLES = 100  # the authors' `xs = xs[:100]`
GRADIENT_SEED = 42  # the authors' `random.Random(42).shuffle(xs)`


def cyclic_order(group: Group) -> int:
    """n when `group` is C_n with element x the residue x (table[a, b] = (a + b) mod n), else raise."""
    n = group.order
    residues = np.arange(n)
    if not np.array_equal(np.asarray(group.table), (residues[:, None] + residues[None, :]) % n):
        raise UniversalityError(f"clock and pizza are algorithms for modular addition; group {group.name!r} is not "
                                f"a cyclic group C_n with elements 0..n-1: use make_group('C{n}') or another C_n")
    return n


def _check_model(model: torch.nn.Module, n: int, *, embedding: bool) -> None:
    """`embedding`: the model must also read its tokens through `embed`, an nn.Embedding of n + 1 rows
    (residues 0..n-1 and "="), as a GroupTransformer does."""
    if getattr(model, "order", None) != n:
        raise UniversalityError(f"the model is built for {getattr(model, 'order', '?')} elements, the group has {n}: "
                                f"pass the group the model was trained on")
    embed = getattr(model, "embed", None)
    if embedding and not (isinstance(embed, torch.nn.Embedding) and embed.num_embeddings == n + 1):
        raise UniversalityError(f"these diagnostics read the token embeddings of a GroupTransformer (`embed`, an "
                                f"nn.Embedding of n + 1 = {n + 1} rows), got {type(model).__name__}")


def gradient_symmetricity(model: GroupTransformer, group: Group, *, samples: int = GRADIENT_SAMPLES,
                          seed: int = GRADIENT_SEED) -> float:
    """Mean cosine similarity between the gradients of logit Q_c with respect to the two input token
    embeddings E[a] and E[b] (the rows the embedding gives positions 0 and 1), over `samples` triples.

    As the authors: every (a, b, c) in a-major order, shuffled by `random.Random(seed)`, the first
    `samples` kept (with the defaults, their exact 100 triples); c is any residue, not only a + b.
    Pizza near 1 (their model A: 0.9937), clock lower (model B: 0.3336). With attention_rate 0 it is 1
    by construction here: the "=" position reads E[a] + E[b] through the same map. A triple whose two
    gradients include a zero vector has no cosine and is left out (NaN if all are).
    Returns a float in [-1, 1].
    """
    n = cyclic_order(group)
    _check_model(model, n, embedding=True)
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= n**3:
        raise UniversalityError(f"samples must be an integer in [1, n^3 = {n**3}], got {short_repr(samples)}")
    order = list(range(n**3))  # the triple index a n^2 + b n + c; shuffle permutes by length alone
    random.Random(seed).shuffle(order)
    a, rest = np.divmod(np.asarray(order[:samples]), n * n)
    b, c = np.divmod(rest, n)
    captured = []

    def keep(module, inputs, output):  # output [samples, 3, d_model], the token embeddings before W_pos
        output.retain_grad()
        captured.append(output)

    handle = model.embed.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(torch.from_numpy(a), torch.from_numpy(b))  # [samples, n]
            # samples do not interact (no norm over the batch): one backward gives every sample's gradient
            logits.gather(1, torch.from_numpy(c)[:, None]).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    grad = captured[0].grad.double()  # [samples, 3, d_model]
    left, right = grad[:, 0], grad[:, 1]  # [samples, d_model] each
    norms = left.norm(dim=1) * right.norm(dim=1)  # [samples]
    cosines = (left * right).sum(dim=1)[norms > 0] / norms[norms > 0]
    return float(cosines.mean()) if len(cosines) else math.nan


@torch.no_grad()
def correct_logits(model: torch.nn.Module, group: Group, *, centred: bool = False) -> np.ndarray:
    """L [n, n] float64: L[s, d] = logit of the correct answer s for the pair with a + b = s and a - b = d
    (mod n). For odd n each (s, d) is one pair; for even n half the cells are hit twice and half never
    (NaN), as the parity of s and d must agree; the authors' table keeps the last pair written.

    centred : read the logits Q [pairs, n] after removing what does not depend on both the pair and the
        answer, Q[p, c] - mean_c Q[p, c] - mean_p Q[p, c] + mean Q: a shift of one pair's logits changes no
        prediction, and a shift of one answer's over every pair (a prior) says nothing about the pair; a
        circle alone (`isolate_circle`) adds such a prior, which the correct logit would read as a
        dependence on the sum s. Default False: the authors' raw logits.
    """
    n = cyclic_order(group)
    _check_model(model, n, embedding=False)
    a, b = np.divmod(np.arange(n * n), n)  # [pairs]
    target = (a + b) % n
    logits = model(torch.from_numpy(a), torch.from_numpy(b)).double().numpy()  # [pairs, n]
    if centred:
        logits = logits - logits.mean(axis=1, keepdims=True) - logits.mean(axis=0, keepdims=True) + logits.mean()
    table = np.full((n, n), np.nan)
    table[target, (a - b) % n] = logits[np.arange(n * n), target]
    return table


def distance_irrelevance(model: torch.nn.Module, group: Group, *, centred: bool = False) -> float:
    """How little the correct logit depends on the distance (a - b) mod n: for each distance d the
    standard deviation of L[s, d] over the sums s, averaged over d, over the standard deviation of all L
    (`correct_logits`, with `centred`; population standard deviations, as numpy's default in the authors'
    code):  mean_d std_s L[s, d] / std_{s,d} L[s, d].

    Near 1: the logit ignores the distance (clock; the paper's model B 0.85); near 0: it is set by the
    distance (pizza; model A 0.17). Returns a float >= 0.
    """
    table = correct_logits(model, group, centred=centred)  # [sums, distances]
    total = np.nanstd(table)
    if not total > 0:
        raise UniversalityError("every correct logit is the same, so distance irrelevance is undefined: "
                                "is the model trained?")
    return float(np.nanmean(np.nanstd(table, axis=0)) / total)


def embedding_key_frequencies(model: GroupTransformer, group: Group, *,
                              threshold: float | None = None) -> tuple[int, ...]:
    """Fourier frequencies k >= 1 of C_n holding more than `threshold` of the token embedding's squared
    norm over the n residues (`fourier_key_frequencies` on E[:n], [n, d_model]); both algorithms use
    such circles. `threshold` None: the 5% default, raised to 3x chance (3 * 2 / n) for small n."""
    n = cyclic_order(group)
    _check_model(model, n, embedding=True)
    threshold = max(FREQUENCY_THRESHOLD, 6 / n) if threshold is None else threshold
    embedding = model.embed.weight.detach()[:n].double().numpy()  # [n, d_model]
    table = fourier_key_frequencies(embedding, n, threshold=threshold)
    return tuple(int(k) for k in table.query("key and frequency > 0").frequency)


def classify_algorithm(gradient_symmetricity: float, distance_irrelevance: float) -> Algorithm:
    """"pizza" when symmetricity >= PIZZA_MIN_SYMMETRICITY (0.98) and distance irrelevance <=
    PIZZA_MAX_DISTANCE_IRRELEVANCE (0.5); "clock" when symmetricity < 0.98 and distance irrelevance >=
    CLOCK_MIN_DISTANCE_IRRELEVANCE (0.65); else "mixed". Where the cuts come from: `universality._defaults`."""
    for name, value in (("gradient_symmetricity", gradient_symmetricity),
                        ("distance_irrelevance", distance_irrelevance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UniversalityError(f"{name} must be a finite number, got {short_repr(value)}")
    symmetric = gradient_symmetricity >= PIZZA_MIN_SYMMETRICITY
    if symmetric and distance_irrelevance <= PIZZA_MAX_DISTANCE_IRRELEVANCE:
        return "pizza"
    if not symmetric and distance_irrelevance >= CLOCK_MIN_DISTANCE_IRRELEVANCE:
        return "clock"
    return "mixed"
