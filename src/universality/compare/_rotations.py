"""Rotations for the baseline, keyed by (seed, unit set index, rotation index, size): one Q per key,
reused for every model holding that unit set. (Temporary dense version; see branch `rotations`.)"""

from __future__ import annotations

import torch

from ._baseline import haar_rotation

__all__ = ["rotation", "ROTATION_KINDS"]

ROTATION_KINDS = ("haar", "fast")


class _Dense:
    def __init__(self, q: torch.Tensor):
        self.q, self.size, self._cast = q, q.shape[0], {}

    def _as(self, dtype):
        if dtype not in self._cast:
            self._cast[dtype] = self.q.to(dtype)
        return self._cast[dtype]

    def dense(self):
        return self.q

    def rotate_columns(self, x):
        return x @ self._as(x.dtype).T

    def rotate_rows(self, x):
        return self._as(x.dtype) @ x

    def rotated_variances(self, gram):
        return ((self.q @ gram) * self.q).sum(dim=1)


def rotation(kind: str, seed: int, unit_set_index: int, rotation_index: int, size: int):
    import numpy as np
    state = np.random.SeedSequence([seed, unit_set_index, rotation_index, size]).generate_state(2)
    return _Dense(haar_rotation(size, int(state[0]) << 31 | int(state[1]) >> 1))
