"""The ground-truth steering intervention of a group-composition MLP: the left action of rho(c' c^-1) on the
key irreps' blocks of its left embedding, read from and written into the pre-activation (mlp.hook_pre).

Why hook_pre. There h(a, b) = T_L[a] + T_R[b] exactly (`GroupMLP.hidden_tables`, [n, units] each), and
the rest of the model, logits = U relu(h), is fixed. Each table, as a function of its element, splits
over the real irreps' isotypic blocks of R^G: T_L = m_L + sum_rho Q_rho Z_L,rho with Q_rho [n, r] an
orthonormal basis of rho's block (`irreps._bases.irrep_bases`, r = dim^2 / e) and Z_L,rho = Q_rho^T T_L
[r, units] (likewise T_R). Left translation preserves every block: Q_rho[g a] = Q_rho[a] M_rho(g) with
M_rho(g) = Q_rho^T Q_rho[g .] [r, r] orthogonal, the rho(g) action written in the block's coordinates.
The answer c = a b is not linearly present at hook_pre at all: over all pairs, the mean of h over the
pairs with a b = c is m_L + m_R for every c (each fibre meets every a and every b once), so every
mean-difference steering vector there is exactly 0.

Definition. For a request c -> c' let g = c' c^-1 (so (g a) b = c'). With K the model's key irreps
(logit similarity above the threshold, trivial irrep excluded):

    1. x = (h - m_L - m_R) Z^+, Z = [Z_L,rho ; Z_R,rho for rho in K] stacked [R, units], Z^+ its
       pseudo-inverse: the key coordinates of both inputs, read from h alone (x_L,rho = Q_rho[a] exactly
       when the tables lie in the key blocks and Z has full row rank R <= units);
    2. h' = h + sum_{rho in K} x_L,rho (M_rho(g) - I) Z_L,rho,

i.e. the key part of the left table moves from a to g a and everything else stays. When the tables lie
in the key blocks, h' = h(g a, b): the model's own state on an input whose answer is c', so the
intervention succeeds wherever the model is right on that input (>= 99% on a grokked model). c' = c
gives g = e and h' = h.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch

from .._defaults import KEY_THRESHOLD
from ..errors import UniversalityError
from ..irreps._bases import find_irreps, irrep_bases, is_trivial
from ..irreps._irreps import logit_similarity
from ._steered import SteeredModel, check_targets

__all__ = ["IrrepRotation", "key_irreps"]


def key_irreps(steered: SteeredModel, threshold: float = KEY_THRESHOLD) -> list[str]:
    """Labels of the non-trivial irreps whose logit similarity with chi(a b c^-1) exceeds `threshold`
    (`irreps.logit_similarity`, the paper's rule), from the model's logits on all pairs."""
    logits = steered.readout(steered.hidden).numpy()  # [pairs, n]: the model's logits, from either unit set
    table: pd.DataFrame = logit_similarity(steered.group, logits, threshold=threshold)
    return table.irrep[table.key].tolist()


class IrrepRotation:
    """The ground truth (module docstring) for one model: call it like any intervention.

    steered : a `SteeredModel` at 'mlp.hook_pre'
    key : irrep labels (or `RealIrrep`s); None = `key_irreps(steered)`

    Fitted state: key_ (labels used), decoder_ [units, R] = Z^+, left_ [R_L, units] = the Z_L blocks,
    rotations_ [n, R_L, R_L] block-diagonal M(g) for every g, offset_ [units] = m_L + m_R,
    residual_ = share of h's variance over all pairs that step 1 leaves unexplained.
    """

    def __init__(self, steered: SteeredModel, key: Iterable | None = None):
        if steered.unit_set != "mlp.hook_pre":
            raise UniversalityError(f"the ground-truth rotation acts on mlp.hook_pre (h = T_L[a] + T_R[b]), not "
                                    f"{steered.unit_set!r}; build the SteeredModel with unit_set='mlp.hook_pre'")
        group, n = steered.group, steered.group.order
        labels = key_irreps(steered) if key is None else [irrep.label for irrep in find_irreps(group, key)]
        chosen = set(labels)
        bases = [basis for irrep, basis in irrep_bases(group) if irrep.label in chosen and not is_trivial(irrep)]
        if not bases:
            raise UniversalityError(f"no non-trivial key irreps ({labels or 'none'}) to rotate: the model has not "
                                    f"learned the group; train it until it generalises")
        with torch.no_grad():
            t_left, t_right = (t.double().numpy() for t in steered.module.hidden_tables())  # [n, units] each
        z_left = np.concatenate([q.T @ t_left for q in bases])  # [R_L, units]
        z_right = np.concatenate([q.T @ t_right for q in bases])  # [R_L, units]
        # M(g) per block: Q[g a] = Q[a] M(g), M(g) = Q^T Q[table[g]] [r, r]; block-diagonal over the key irreps
        rotations = np.zeros((n, len(z_left), len(z_left)))
        start = 0
        for q in bases:
            r = q.shape[1]
            rotations[:, start:start + r, start:start + r] = np.einsum("xi,gxj->gij", q, q[group.table])
            start += r
        self.key_ = sorted(chosen)
        self.offset_ = torch.from_numpy(t_left.mean(axis=0) + t_right.mean(axis=0))  # [units]
        self.decoder_ = torch.from_numpy(np.linalg.pinv(np.concatenate([z_left, z_right])))  # [units, 2 R_L]
        self.left_ = torch.from_numpy(z_left)  # [R_L, units]
        self.rotations_ = torch.from_numpy(rotations)  # [n, R_L, R_L]
        self._group = group
        centred = steered.hidden - steered.hidden.mean(dim=0)
        explained = (steered.hidden - self.offset_) @ self.decoder_ @ torch.cat([self.left_, torch.from_numpy(z_right)])
        self.residual_ = float(((centred - explained + explained.mean(dim=0)) ** 2).sum() / (centred ** 2).sum())

    def __call__(self, h: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """h' [k, units] for states h [k, units], answers c = source [k] and requests c' = target [k]."""
        group = self._group
        source, target = check_targets(group, source), check_targets(group, target)
        table = torch.from_numpy(np.array(group.table, dtype=np.int64))
        g = table[target, torch.from_numpy(np.array(group.inverse, dtype=np.int64))[source]]  # [k]: c' c^-1
        x_left = ((h - self.offset_) @ self.decoder_)[:, :len(self.left_)]  # [k, R_L]
        moved = torch.einsum("kr,krs->ks", x_left, self.rotations_[g]) - x_left  # [k, R_L]: x (M(g) - I)
        return h + moved @ self.left_  # [k, units]
