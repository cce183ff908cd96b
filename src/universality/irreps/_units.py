"""Each hidden unit's irrep: the real irrep holding most of its variance on G x G.

| function        | input                   | returns: DataFrame columns        |
|-----------------|-------------------------|-----------------------------------|
| `unit_irreps` | hidden [pairs, units]   | unit, irrep, share, dead          |
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._defaults import UNIT_THRESHOLD, is_dead
from ..groups import Group
from .._inputs import as_float64
from ._bases import irrep_bases, is_trivial

__all__ = ["UNIT_THRESHOLD", "unit_irreps"]

# Dead: the one rule of `_defaults.is_dead` (variance within float32 rounding of the mean); exactly 0
# when the unit never fires, or is constant on every pair.
_CHUNK_ENTRIES = 2**22  # float64 entries per block of units: 32 MB


def unit_irreps(group: Group, hidden, *, threshold: float = UNIT_THRESHOLD) -> pd.DataFrame:
    """Per unit: the non-trivial irrep with the largest share of its variance over the pairs.

    hidden : [pairs, units]
    threshold : an irrep is assigned only if its share is >= threshold; else irrep is missing
    Returns unit, irrep (label, or missing: test with `.isna()`), share (float, NaN if dead), dead (bool).

    The unit's activation F[a, b], centred over pairs, is expanded in the real Fourier basis of G on
    both axes, F^ = Q^T F Q, and its energy split into blocks (rho_a, rho_b) = ||P_rho F P_sigma||^2.
    Irrep rho's share = blocks (rho, 1) + (1, rho) + (rho, rho), over the total: its rho(a), rho(b)
    terms and every product of rho(a) and rho(b) entries, which includes rho(ab). Mixed blocks
    (rho, sigma), rho != sigma both non-trivial, count for neither. A dead unit (no variance) gets
    no irrep and share NaN: it is never assigned.

    >>> import numpy as np
    >>> from universality.groups import make_group, real_irreps
    >>> g = make_group("S3")
    >>> sign_ab = real_irreps(g)[1].character[g.table.ravel()]  # [pairs]
    >>> table = unit_irreps(g, np.stack([sign_ab, np.zeros(36)], axis=1))
    >>> table.irrep.isna().tolist(), table.irrep[0], table.dead.tolist()
    ([False, True], '(1,1,1)', [False, True])
    """
    n = group.order
    values = as_float64(hidden, "hidden", {"pairs": n * n, "units": None})
    bases = irrep_bases(group)
    fourier = np.hstack([basis for _, basis in bases])  # [n, n], orthogonal
    starts = np.cumsum([0] + [basis.shape[1] for _, basis in bases[:-1]])  # first column of each block
    trivial = next(i for i, (irrep, _) in enumerate(bases) if is_trivial(irrep))
    units = values.shape[1]
    energy = np.empty((units, len(bases), len(bases)))  # [units, irreps_a, irreps_b]
    step = max(1, _CHUNK_ENTRIES // (n * n))
    for first in range(0, units, step):
        # 1) F [chunk, n_a, n_b], centred over pairs; 2) F^ = Q^T F Q; 3) block sums of F^2
        grid = (values[:, first:first + step] - values[:, first:first + step].mean(axis=0)).T.reshape(-1, n, n)
        squared = (fourier.T @ grid @ fourier) ** 2
        energy[first:first + step] = np.add.reduceat(np.add.reduceat(squared, starts, axis=1), starts, axis=2)
    total = energy.sum(axis=(1, 2))  # [units]
    dead = is_dead(total / values.shape[0], values.mean(axis=0))
    # 4) shares of the non-trivial irreps, [units, irreps]
    diagonal = np.einsum("uii->ui", energy)
    shares = (energy[:, :, trivial] + energy[:, trivial, :] + diagonal) / np.where(dead, 1.0, total)[:, None]
    shares[:, trivial] = -np.inf
    best = shares.argmax(axis=1)
    rows = []
    for unit in range(units):
        share = float(shares[unit, best[unit]])
        assigned = not dead[unit] and share >= threshold
        rows.append({"unit": unit, "irrep": bases[best[unit]][0].label if assigned else None,
                     "share": float("nan") if dead[unit] else share, "dead": bool(dead[unit])})
    return pd.DataFrame(rows)
