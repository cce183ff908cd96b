"""Chughtai, Chan, Nanda 2023 (arXiv 2302.03025): which real irreps a group-composition model uses.

Pairs are all (a, b), a-major (pair = a * n + b, n = |G|); every function takes plain tensors or arrays
and computes in float64, so it serves any architecture.

| function                     | input                          | returns: DataFrame columns            |
|------------------------------|--------------------------------|---------------------------------------|
| `logit_similarity`           | logits [pairs, n]              | irrep, dim, similarity, key           |
| `fraction_logits_explained`  | that table                     | float: sum of similarity^2            |
| `fraction_variance_explained`| matrix [n, d] (rows: elements) | irrep, dim, fve, chance               |
| `hidden_fve`                 | hidden [pairs, units]          | irrep, term ('a', 'b', 'ab'), fve     |
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import UniversalityError
from ..groups import Group, real_irreps
from .._defaults import KEY_THRESHOLD
from .._inputs import as_float64
from ._bases import irrep_bases, is_trivial, product_means

__all__ = ["KEY_THRESHOLD", "fraction_logits_explained", "fraction_variance_explained", "hidden_fve",
           "logit_similarity"]



def logit_similarity(group: Group, logits, *, threshold: float = KEY_THRESHOLD) -> pd.DataFrame:
    """Cosine similarity of the logits with chi_rho(a b c^-1), one row per real irrep rho.

    logits : [pairs, n], logits[a * n + b, c] scores output c for the pair (a, b)
    threshold : a key irrep has similarity > threshold (the paper's 0.005)

    The logits are centred over c for each pair (softmax ignores a per-pair shift), flattened over
    (a, b, c), and compared with the real character tensor (a conjugate pair uses 2 Re chi). The tensors
    of distinct irreps are orthogonal, so the squared similarities sum to at most 1 (see
    `fraction_logits_explained`). The trivial irrep scores 0 by construction.

    >>> from universality.groups import make_group, real_irreps
    >>> g = make_group("S3")
    >>> chi = real_irreps(g)[2].character  # the 2-dim standard irrep
    >>> logits = chi[g.table[g.table.ravel()][:, g.inverse]]  # [pairs, n]: chi(a b c^-1)
    >>> logit_similarity(g, logits).similarity.round(6).tolist()
    [0.0, 0.0, 1.0]
    """
    n = group.order
    values = as_float64(logits, "logits", {"pairs": n * n, "order": n})
    # 1) centre over the output c for each pair
    centred = values - values.mean(axis=1, keepdims=True)  # [pairs, n_c]
    norm = np.linalg.norm(centred)
    if norm == 0:
        raise UniversalityError("logits are constant over the outputs for every pair, so their similarity with "
                                "any character is undefined; pass a model's logits")
    # 2) sums over each fibre a b = x: S[x, c] = sum_{a b = x} L[a, b, c]
    fibres = n * product_means(group, centred.reshape(n, n, n))  # [n_x, n_c]
    # 3) <L, chi(a b c^-1)> = sum_{x, c} S[x, c] chi(x c^-1); chi is constant on the class of x c^-1
    classes = group.class_of[group.table[:, group.inverse]]  # [n_x, n_c]
    by_class = np.bincount(classes.ravel(), weights=fibres.ravel(), minlength=len(group.classes))  # [classes]
    representatives = [members[0] for members in group.classes]
    rows = []
    for irrep in real_irreps(group):
        inner = by_class @ irrep.character[representatives]
        similarity = inner / (norm * n * np.linalg.norm(irrep.character))  # ||chi(a b c^-1)|| = n ||chi||
        rows.append({"irrep": irrep.label, "dim": irrep.dim, "similarity": float(similarity),
                     "key": bool(similarity > threshold)})
    return pd.DataFrame(rows)


def fraction_logits_explained(similarity) -> float:
    """Sum over irreps of similarity^2: the share of the centred logits' squared norm in the span of the
    character tensors chi_rho(a b c^-1) (orthogonal across irreps, so this is at most 1).

    similarity : the table from `logit_similarity`, or its similarity column as an array

    >>> round(fraction_logits_explained([0.0, 0.6, 0.8]), 12)
    1.0
    """
    values = similarity["similarity"] if isinstance(similarity, pd.DataFrame) else similarity
    return float(np.sum(np.square(np.asarray(values, dtype=np.float64))))


def fraction_variance_explained(group: Group, matrix, axis: int = 0) -> pd.DataFrame:
    """Share of ||M||^2 in each real irrep's isotypic block of R^G, M's axis `axis` indexed by element.

    matrix : [n, d] (axis 0), e.g. an embedding [n, embed] or an unembedding [n, hidden]; or [d, n] (axis 1)
    Returns irrep, dim, fve = ||P_rho M||^2 / ||M||^2, chance = rank(P_rho) / n = dim^2 / (e n).

    Not centred: the trivial irrep's row is the share of the mean over elements, and fve sums to 1.
    A random Gaussian M gives fve close to `chance` (d^2 / n for a real irrep of dimension d,
    2 d^2 / n for a conjugate pair of complex dimension d).

    >>> import numpy as np
    >>> from universality.groups import make_group
    >>> table = fraction_variance_explained(make_group("C5"), np.eye(5))
    >>> table.fve.round(6).tolist(), table.chance.tolist()
    ([0.2, 0.4, 0.4], [0.2, 0.4, 0.4])
    """
    n = group.order
    if axis not in (0, 1):
        raise UniversalityError(f"axis must be 0 or 1 (the axis indexed by group elements), not {axis!r}")
    shape = {"order": n, "columns": None} if axis == 0 else {"rows": None, "order": n}
    values = np.moveaxis(as_float64(matrix, "matrix", shape), axis, 0)  # [n, d]
    total = np.sum(values**2)
    if total == 0:
        raise UniversalityError("matrix is all zeros, so its fraction of variance explained is undefined")
    rows = [{"irrep": irrep.label, "dim": irrep.dim, "fve": float(np.sum((basis.T @ values) ** 2) / total),
             "chance": basis.shape[1] / n} for irrep, basis in irrep_bases(group)]
    return pd.DataFrame(rows)


def hidden_fve(group: Group, hidden) -> pd.DataFrame:
    """Share of the hidden layer's variance in the rho(a), rho(b) and rho(ab) terms of each irrep rho.

    hidden : [pairs, units], e.g. post-ReLU activations on all pairs
    Returns irrep, term, fve: three rows per non-trivial irrep, then one row ('-', 'remainder').

    Each unit's activation is a function f(a, b) on the pairs, centred by its mean over pairs
    (so the large mean of ReLU units does not swamp the rest). Its orthogonal components:
    - 'a':  (P_rho f_a)(a), f_a(a) = mean over b of f(a, b): the part depending on a only, in rho's block
    - 'b':  (P_rho f_b)(b), likewise for b
    - 'ab': (P_rho g)(a b), g(c) = mean of f over the pairs with a b = c: the part depending on a b only
    These lie in the (rho, trivial), (trivial, rho) and (rho, rho*) blocks of R^(G x G), so they are
    orthogonal; fve = squared norm summed over units / total centred squared norm. The remainder,
    1 - the rest, is whatever is none of these forms (e.g. rho(a) rho(b) products not of the form rho(ab)).

    >>> from universality.groups import make_group, real_irreps
    >>> g = make_group("S3")
    >>> sign = real_irreps(g)[1].character  # [n]
    >>> table = hidden_fve(g, sign[g.table.ravel()][:, None])  # one unit: sign(a b)
    >>> table.query("fve > 0.5")[["irrep", "term"]].values.tolist()
    [['(1,1,1)', 'ab']]
    """
    n = group.order
    values = as_float64(hidden, "hidden", {"pairs": n * n, "units": None})
    # 1) centre each unit over the pairs; [n_a, n_b, units]
    grid = (values - values.mean(axis=0)).reshape(n, n, -1)
    total = np.sum(grid**2)
    if total == 0:
        raise UniversalityError("hidden activations are constant over the pairs, so their variance cannot be "
                                "split; pass activations of a model on all pairs")
    # 2) the three functions on G whose irrep parts we measure, each [n, units]
    parts = {"a": grid.mean(axis=1), "b": grid.mean(axis=0), "ab": product_means(group, grid)}
    # 3) a function of one element, spread over n pairs each, has n times its squared norm on G
    rows = [{"irrep": irrep.label, "term": term, "fve": float(n * np.sum((basis.T @ f) ** 2) / total)}
            for irrep, basis in irrep_bases(group) if not is_trivial(irrep) for term, f in parts.items()]
    rows.append({"irrep": "-", "term": "remainder", "fve": 1.0 - sum(row["fve"] for row in rows)})
    return pd.DataFrame(rows)
