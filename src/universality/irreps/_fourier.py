"""Key Fourier frequencies of a cyclic-group model (Nanda et al. 2023, "Progress measures for grokking").

| function                  | input                         | returns: DataFrame columns          |
|---------------------------|-------------------------------|-------------------------------------|
| `fourier_key_frequencies` | matrix [n, d], rows: residues | frequency, norm, fve, key           |

For C_n, frequency k's cos and sin rows are the real irrep "k=k+k=n-k" (k = 0 and n/2: one-dimensional),
so fve here equals `fraction_variance_explained(make_group(f"C{n}"), matrix)` irrep by irrep.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import UniversalityError
from .._inputs import as_float64

__all__ = ["FREQUENCY_THRESHOLD", "fourier_key_frequencies"]

# A key frequency holds over 5% of the squared norm: about 3x its share at random initialisation
# for n = 113 (2 / 113 = 1.8%). For small n raise it: chance is 2 / n.
FREQUENCY_THRESHOLD = 0.05


def fourier_key_frequencies(matrix, n: int, *, threshold: float = FREQUENCY_THRESHOLD) -> pd.DataFrame:
    """Norm of `matrix` per Fourier frequency k = 0..n//2 of its rows (cos and sin together).

    matrix : [n, d] with row x the residue x of C_n, e.g. an embedding [n, embed] or an unembedding
        [n, hidden]; a vector [n] is one column. (For logits use `logit_similarity` on C_n: its irrep
        k=k+k=n-k is Nanda et al.'s cos(w_k (a + b - c)) term.)
    Returns frequency, norm, fve = norm^2 / ||M||^2 (sums to 1, not centred: k = 0 is the mean), key = fve > threshold.

    >>> import numpy as np
    >>> x = np.arange(7)
    >>> fourier_key_frequencies(np.cos(2 * np.pi * 3 * x / 7), 7).query("key").frequency.tolist()
    [3]
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise UniversalityError(f"n must be a positive integer (the order of C_n), not {n!r}")
    values = as_float64(matrix, "matrix", {"n": int(n)} if np.ndim(matrix) == 1 else {"n": int(n), "columns": None})
    values = values.reshape(n, -1)  # [n, d]
    total = np.sum(values**2)
    if total == 0:
        raise UniversalityError("matrix is all zeros, so its Fourier spectrum has no shares")
    # Parseval: sum_x |M_x|^2 = (1/n) sum_k |F_k|^2; frequencies k and n-k pair up except 0 and n/2
    coefficients = np.fft.rfft(values, axis=0)  # [n//2 + 1, d]
    energy = np.sum(np.abs(coefficients) ** 2, axis=1) / n  # [n//2 + 1]
    paired = (np.arange(len(energy)) != 0) & (2 * np.arange(len(energy)) != n)
    energy = np.where(paired, 2 * energy, energy)
    fve = energy / total
    return pd.DataFrame({"frequency": np.arange(len(energy)), "norm": np.sqrt(energy), "fve": fve,
                         "key": fve > threshold})
