"""Restricted and excluded loss (Chughtai, Chan, Nanda 2023): does the model run on its key irreps' rho(ab)?

| function          | hidden kept                                             | pairs scored       |
|-------------------|---------------------------------------------------------|--------------------|
| `model_loss`      | (logits given)                                          | `mask` (all)       |
| `restricted_loss` | the key irreps' rho(ab) part of the hidden layer        | `pairs_mask` (all) |
| `excluded_loss`   | hidden minus that rho(ab) part                          | `pairs_mask` (all) |

`restricted_hidden` and `excluded_hidden` give the replaced hidden layer itself [pairs, units], for
models whose logits are not hidden @ unembed.T (the transformer: patch it into the forward pass).

The paper scores the restricted loss on all pairs and the excluded loss on the train pairs: pass the
train mask to `excluded_loss`. Logits = hidden @ unembed.T (no bias, as in the paper's MLP).

`hidden_mean` names what the restricted hidden layer keeps besides the key rho(ab) part:
- "dropped" (default, the paper: `total_hidden_excluded_and_restricted_loss` in the authors'
  utils/metrics.py sums the projections onto each key irrep's rho(ab) basis, nothing else);
- "kept": the hidden layer's mean over pairs added back (this package before issue 8); the two differ
  by 2-4% of the loss on trained S4 / S5 MLPs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..errors import UniversalityError
from ..groups import Group
from .._inputs import as_float64
from ._bases import find_irreps, irrep_bases, is_trivial, product_means

__all__ = ["excluded_hidden", "excluded_loss", "model_loss", "restricted_hidden", "restricted_loss"]


def model_loss(logits, target, mask=None) -> float:
    """Mean float64 cross-entropy of logits [pairs, outputs] against target int [pairs], over `mask` bool [pairs].

    >>> from typing import Literal

import numpy as np
    >>> round(model_loss(np.zeros((4, 3)), [0, 1, 2, 0]), 6) == round(float(np.log(3)), 6)
    True
    """
    values = as_float64(logits, "logits", {"pairs": None, "outputs": None})
    labels = _targets(target, *values.shape)
    keep = _mask(mask, len(values))
    # log softmax, shifted by the row maximum for stability
    shifted = values[keep] - values[keep].max(axis=1, keepdims=True)  # [kept, outputs]
    log_norm = np.log(np.exp(shifted).sum(axis=1))  # [kept]
    return float(np.mean(log_norm - shifted[np.arange(len(shifted)), labels[keep]]))


def restricted_loss(group: Group, hidden, unembed, target, key_irreps, pairs_mask=None, *,
                    hidden_mean: Literal["dropped", "kept"] = "dropped") -> float:
    """Loss with the hidden layer replaced by the key irreps' rho(ab) part (plus its mean if `hidden_mean`
    is "kept"; see the module docstring).

    hidden : [pairs, units] post-activations on all pairs; unembed : [outputs, units]; target : int [pairs]
    key_irreps : labels (or `RealIrrep`s) from `real_irreps(group)`; pairs_mask : bool [pairs], None = all
    The rho(ab) part is `hidden_fve`'s 'ab' term: g(c) = mean of the centred activations over the pairs
    with a b = c, projected onto the key irreps' blocks, read at c = a b. The trivial irrep adds nothing
    (its rho(ab) part is the mean, which `hidden_mean` decides and `excluded_loss` never removes).

    >>> from typing import Literal

import numpy as np
    >>> from universality.groups import make_group, real_irreps
    >>> g = make_group("S3")
    >>> sign = real_irreps(g)[1].character[g.table.ravel()]  # [pairs]: sign(a b)
    >>> hidden, unembed = sign[:, None], np.array([[20.0], [-20.0]])  # logits +-20 sign(a b): is a b even?
    >>> target = (sign < 0).astype(int)
    >>> round(restricted_loss(g, hidden, unembed, target, ["(1,1,1)"]), 6)
    0.0
    >>> round(excluded_loss(g, hidden, unembed, target, ["(1,1,1)"]) / float(np.log(2)), 6)
    1.0
    """
    weights = as_float64(unembed, "unembed", {"outputs": None, "units": np.shape(hidden)[-1]})
    restricted = restricted_hidden(group, hidden, key_irreps, hidden_mean=hidden_mean)
    return model_loss(restricted @ weights.T, target, pairs_mask)


def excluded_loss(group: Group, hidden, unembed, target, key_irreps, pairs_mask=None) -> float:
    """Loss with the key irreps' rho(ab) part removed from the hidden layer; arguments as `restricted_loss`.

    Score it on the train pairs (pass their mask), as the paper does: a model that memorised them
    without the key irreps keeps a low excluded loss.
    """
    weights = as_float64(unembed, "unembed", {"outputs": None, "units": np.shape(hidden)[-1]})
    return model_loss(excluded_hidden(group, hidden, key_irreps) @ weights.T, target, pairs_mask)


def restricted_hidden(group: Group, hidden, key_irreps, *,
                      hidden_mean: Literal["dropped", "kept"] = "dropped") -> np.ndarray:
    """The key irreps' rho(ab) part of the hidden layer [pairs, units], plus its mean over pairs [units]
    when `hidden_mean` is "kept" (module docstring)."""
    if hidden_mean not in ("dropped", "kept"):
        raise UniversalityError(f"hidden_mean must be 'dropped' (the paper) or 'kept', not {hidden_mean!r}")
    values, mean, part = _split(group, hidden, key_irreps)
    return part + mean if hidden_mean == "kept" else part


def excluded_hidden(group: Group, hidden, key_irreps) -> np.ndarray:
    """The hidden layer [pairs, units] with the key irreps' rho(ab) part removed."""
    values, mean, part = _split(group, hidden, key_irreps)
    return values - part


def _split(group: Group, hidden, key_irreps):
    """(hidden [pairs, units], mean [units], key rho(ab) part [pairs, units]), float64."""
    n = group.order
    keys = find_irreps(group, key_irreps)
    values = as_float64(hidden, "hidden", {"pairs": n * n, "units": None})
    # 1) centre over pairs; 2) g(c) = mean over the fibre a b = c, [n, units]
    mean = values.mean(axis=0)
    g = product_means(group, (values - mean).reshape(n, n, -1))
    # 3) project g onto the key irreps' blocks, 4) read it at c = a b for every pair
    chosen = {irrep.label for irrep in keys if not is_trivial(irrep)}
    key_g = sum((basis @ (basis.T @ g) for irrep, basis in irrep_bases(group) if irrep.label in chosen),
                np.zeros_like(g))
    return values, mean, key_g[group.table.ravel()]


def _targets(target, pairs: int, outputs: int) -> np.ndarray:
    """Int [pairs] in 0..outputs-1, from a tensor, array or list."""
    labels = target.detach().cpu().numpy() if hasattr(target, "detach") else np.asarray(target)
    if labels.shape != (pairs,) or not np.issubdtype(labels.dtype, np.integer):
        raise UniversalityError(f"target must be integers of shape [{pairs}] (one output per pair), got "
                                f"{labels.dtype} {list(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= outputs):
        raise UniversalityError(f"target holds {labels.min()}..{labels.max()}; outputs are 0..{outputs - 1}")
    return labels


def _mask(mask, pairs: int) -> np.ndarray:
    """Bool [pairs] selecting at least one pair; None selects all."""
    if mask is None:
        return np.ones(pairs, dtype=bool)
    keep = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if keep.shape != (pairs,) or keep.dtype != bool:
        raise UniversalityError(f"mask must be bool of shape [{pairs}] (True = scored pair), got "
                                f"{keep.dtype} {list(keep.shape)}")
    if not keep.any():
        raise UniversalityError("mask selects no pairs; the loss over no pairs is undefined")
    return keep
