"""Clock or pizza circle by circle: Zhong et al. 2023's diagnostics on one key frequency at a time.

A seed holds several circles (key frequencies k of its embedding), and a pizza's are not independent:
next to a pizza of frequency k the authors find an "accompanying pizza", a circle of frequency 2k whose
correct logit -cos(w (a - b)) (w = 2 pi k / n) is large exactly where the pizza's |cos(w (a - b) / 2)| is
small. Summed over circles the correct logit hardly depends on the distance a - b any more, so the
whole-model distance irrelevance of a pure pizza reads "mixed" or even "clock" (`tests/test_algorithm.py`
builds such a model). So, as the authors' "Circle Isolation" and "Logit FVE" cells (fjzzq2002/pizza,
`code/eval-main.ipynb`: the embedding cut down to one circle, then the model run on it), each circle is
diagnosed alone. The authors cut along a pair of principal components, plus the mean; here circle k is the
Fourier subspace of frequency k, the same plane when the circle is clean and defined without a PCA:

    E_k[x] = sum_y P_k[x, y] E[y],  P_k[x, y] = (1 + m_k cos(2 pi k (x - y) / n)) / n   (x, y in 0..n-1)

m_k = 2 (m_k = 1 for k = n / 2): each column of the residue rows E[:n] [n, d_model] projected on
{1, cos(2 pi k x / n), sin(2 pi k x / n)}, i.e. its mean and its frequency-k part kept; the "=" row unchanged.

| function             | returns                                                                            |
|----------------------|------------------------------------------------------------------------------------|
| `isolate_circle`     | a copy of the model with E replaced by E_k                                         |
| `circle_diagnostics` | one row per circle k: gradient symmetricity, distance irrelevance (centred logits) |
|                      | and algorithm of the model on E_k                                                  |
| `classify_circles`   | the seed's algorithm: all circles pizza, pizza; all clock, clock; else mixed       |
| `diagnose`           | every whole-model and per-circle diagnostic of one C_n transformer                 |

>>> classify_circles(["pizza", "pizza"]), classify_circles(["clock"]), classify_circles(["clock", "pizza"])
('pizza', 'clock', 'mixed')
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import UniversalityError, short_repr
from ..groups import Group
from ._diagnostics import (Algorithm, _check_model, classify_algorithm, cyclic_order, distance_irrelevance,
                           embedding_key_frequencies, gradient_symmetricity)

__all__ = ["isolate_circle", "circle_diagnostics", "classify_circles", "diagnose"]

ALGORITHMS = ("clock", "pizza", "mixed")


def isolate_circle(model: torch.nn.Module, group: Group, frequency: int) -> torch.nn.Module:
    """A deep copy of `model` whose residue embeddings E[:n] are replaced by E_k = P_k E[:n] (module
    docstring), k = `frequency` in 1..n//2: the model as it computes with circle k alone. `model` is unchanged."""
    n = cyclic_order(group)
    _check_model(model, n, embedding=True)
    if isinstance(frequency, bool) or not isinstance(frequency, (int, np.integer)) or not 1 <= frequency <= n // 2:
        raise UniversalityError(f"frequency must be an integer in [1, n // 2 = {n // 2}], got {short_repr(frequency)}")
    residues = np.arange(n)
    multiplicity = 1 if 2 * frequency == n else 2  # the n/2 irrep has a cos row only
    projector = (1 + multiplicity * np.cos(2 * np.pi * frequency * (residues[:, None] - residues[None, :]) / n)) / n
    isolated = copy.deepcopy(model)
    weight = isolated.embed.weight  # [n + 1, d_model]
    with torch.no_grad():
        circle = torch.from_numpy(projector) @ weight[:n].double()  # [n, n] @ [n, d_model]
        weight[:n] = circle.to(weight.dtype)
    return isolated


def circle_diagnostics(model: torch.nn.Module, group: Group, *,
                       frequencies: Sequence[int] | None = None) -> pd.DataFrame:
    """For each circle k (`frequencies`, default `embedding_key_frequencies`): the gradient symmetricity and
    distance irrelevance of `isolate_circle(model, group, k)`, and `classify_algorithm` of the two.

    Returns a DataFrame [circles rows] with columns frequency, gradient_symmetricity, distance_irrelevance,
    algorithm. A pizza circle k reads L_k[s, d] ~ |cos(pi k d / n)| (distance irrelevance near 0), its
    accompanying circle 2k ~ -cos(2 pi k d / n) (also near 0), a clock circle a constant plus what depends on
    the sum s alone (near 1); a circle whose correct logit is the same for every pair raises, as
    `distance_irrelevance` does.
    """
    n = cyclic_order(group)
    frequencies = embedding_key_frequencies(model, group) if frequencies is None else tuple(frequencies)
    rows = []
    for frequency in frequencies:
        isolated = isolate_circle(model, group, frequency)
        symmetricity = gradient_symmetricity(isolated, group)
        try:
            irrelevance = distance_irrelevance(isolated, group, centred=True)
        except UniversalityError:
            raise UniversalityError(f"circle {frequency} of C{n} alone gives every pair the same correct logit, so "
                                    f"its distance irrelevance is undefined: leave it out of `frequencies`") from None
        rows.append({"frequency": int(frequency), "gradient_symmetricity": symmetricity,
                     "distance_irrelevance": irrelevance,
                     "algorithm": classify_algorithm(symmetricity, irrelevance)})
    return pd.DataFrame(rows, columns=["frequency", "gradient_symmetricity", "distance_irrelevance", "algorithm"])


def classify_circles(circle_algorithms: Sequence[str]) -> Algorithm:
    """The seed's algorithm from its circles' (`circle_diagnostics(...).algorithm`): "pizza" when every
    circle is a pizza, "clock" when every circle is a clock, else "mixed" (clock and pizza circles side by
    side, a mixed circle, or no circle at all: a non-circular solution)."""
    unknown = sorted(set(circle_algorithms) - set(ALGORITHMS))
    if unknown:
        raise UniversalityError(f"unknown circle algorithms {unknown}; choose from: {', '.join(ALGORITHMS)}")
    kinds = set(circle_algorithms)
    return kinds.pop() if len(kinds) == 1 and kinds <= {"clock", "pizza"} else "mixed"


def diagnose(model: torch.nn.Module, group: Group) -> dict:
    """Every diagnostic of one C_n transformer, whole model and per circle:

    gradient_symmetricity, distance_irrelevance : the whole model's (`_diagnostics`)
    whole_model_algorithm : `classify_algorithm` of those two (the classification before circles)
    key_frequencies : tuple of ints, the circles
    circle_gradient_symmetricity, circle_distance_irrelevance : tuples of floats, one per circle
    circle_algorithms : tuple of "clock" | "pizza" | "mixed", one per circle
    algorithm : the seed's, `classify_circles(circle_algorithms)`
    """
    symmetricity = gradient_symmetricity(model, group)
    irrelevance = distance_irrelevance(model, group)
    circles = circle_diagnostics(model, group)
    return {"gradient_symmetricity": symmetricity, "distance_irrelevance": irrelevance,
            "whole_model_algorithm": classify_algorithm(symmetricity, irrelevance),
            "key_frequencies": tuple(int(k) for k in circles.frequency),
            "circle_gradient_symmetricity": tuple(float(x) for x in circles.gradient_symmetricity),
            "circle_distance_irrelevance": tuple(float(x) for x in circles.distance_irrelevance),
            "circle_algorithms": tuple(circles.algorithm),
            "algorithm": classify_circles(list(circles.algorithm))}
