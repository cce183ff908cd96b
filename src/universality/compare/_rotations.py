"""Seeded orthogonal rotations of one unit set for the random-rotation baseline: dense Haar or fast.

The baseline rotates the n units of a unit set of model b by an orthogonal Q and needs, from the
streamed moments only, `C Q^T` for a cross-moment block C [rows, n], `Q C` for C [n, cols] and the
rotated units' variances diag(Q G Q^T) for the set's centred Gram G [n, n]. Every rotation here is
keyed by (seed, unit set index, rotation index, size) through a numpy SeedSequence, not by the
model: one Q is drawn once and serves every model that has that unit set.

Two kinds:

- "haar": a dense Haar-random Q (`haar_rotation`: QR of a Gaussian with sign fix). Building it
  costs O(n^3) (QR), applying it O(n^2) per row, the variances O(n^3): at n = 16384 this is minutes
  and 2 GB per float64 Q.
- "fast": R rounds of (a uniformly random permutation, then a block-diagonal matrix of independent
  Haar blocks of near-equal sizes <= 128),

      Q = B_R P_R ... B_2 P_2 B_1 P_1,

  exactly orthogonal for any n (a product of orthogonal factors; Q Q^T = I to ~1e-15 in float64).
  For n <= 128 it is one Haar block: exactly Haar. Otherwise R = ceil(log n / log 128) + 2 rounds
  (4 up to n = 16384, 5 up to 2M): each round multiplies a unit's spread by up to 128, so
  ceil(log_128 n) rounds reach every coordinate and two more even out the energy. Measured on the
  columns Q e_j of Q (the images of single units, the hardest inputs to mix) at n = 1536 to 24576:
  n sum_k Q_kj^4 (3 for Haar) was 2.99-3.01, and sqrt(n) max_k |Q_kj| within 0.04 of Gaussian
  columns'; with one round fewer, 3.19 and 0.42 above at n = 16384. Blocks of 128 in 4 rounds
  mix better than blocks of 256 in 3 (3.03 at 16384) for two thirds of the flops; a Hadamard
  transform would need n to be a power of two (or padding, which is not a rotation of n units).
  On MiniLM's MLP neurons the baseline distribution already matches Haar's with 2 rounds, and is
  off with 1 (tests/test_rotations.py).

  Costs: building Q O(R n 128^2) (R n / 128 QRs of 128 x 128; R permutations and blocks held,
  O(R 128 n) memory); `rotate_columns` and `rotate_rows` 2 R 128 flops per entry instead of 2 n
  (n / 512 times fewer at R = 4); `rotated_variances` 4 (R - 1) 128 n^2 float64 flops (Q' G Q'^T
  for the first R - 1 rounds, then only the diagonal blocks the last round needs) instead of
  O(n^3). Measured (benchmarks/bench_rotations.py, 2 busy cores): build + C Q^T on [4096, n]
  float32 + variances, n = 16384: 28-39 s against ~13 min projected for dense Haar.

`rotation` builds either kind with its QRs on one thread (`_QR_THREADS`, see there).

>>> q = rotation("fast", seed=0, unit_set_index=1, rotation_index=0, size=300)
>>> x = torch.randn(5, 300, dtype=torch.float64)
>>> torch.allclose(q.rotate_columns(x), x @ q.dense().T)
True
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch

from .._defaults import rotation_kind_for
from .._threads import torch_threads
from ..errors import UniversalityError
from ._baseline import haar_rotation

__all__ = ["Rotation", "HaarRotation", "FastRotation", "RotationSet", "rotation", "ROTATION_KINDS", "BLOCK"]

ROTATION_KINDS = ("auto", "haar", "fast")  # auto: haar up to _defaults.HAAR_MAX_WIDTH units, else fast
BLOCK = 128  # largest Haar block of the fast kind
# Threads for every QR (the dense one and the fast kind's blocks). Measured on the shared 2-core
# machine, QR of 3072 x 3072: idle, 1 thread 1.9 s and 2 threads 1.0 s; at load 3.4, 3.0 s and
# 4.0 s (the issue saw 2.5 s and 11-12 s on a busy machine); 128 QRs of 128 x 128 at load 3:
# 0.18 s and 1.26 s. One thread loses at most 2x when idle and never waits on a busy core.
_QR_THREADS = 1
# entries of Q_r G (rotated variances) formed at once by a `RotationSet`: 32 MB in float64
_STACKED_ENTRIES = 2**22


class Rotation(Protocol):
    """An orthogonal Q [size, size] applied without forming it. Products run in the input's dtype
    and device; Q's entries are drawn and held in float64."""

    size: int

    def rotate_columns(self, x: torch.Tensor) -> torch.Tensor:
        """x @ Q^T: x [rows, size] -> [rows, size]."""

    def rotate_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Q @ x: x [size, cols] -> [size, cols]."""

    def rotated_variances(self, gram: torch.Tensor) -> torch.Tensor:
        """diag(Q G Q^T) [size] float64 for a symmetric Gram G [size, size] float64."""

    def dense(self) -> torch.Tensor:
        """Q [size, size] float64."""


class HaarRotation:
    """A dense Haar-random Q; the methods are those of `Rotation`.

    Parameters
    ----------
    q : Tensor [size, size] float64, orthogonal
    """

    def __init__(self, q: torch.Tensor):
        self.size = q.shape[0]
        self._q = q
        self._cast: dict[tuple, torch.Tensor] = {}  # Q in each (device, dtype) it has been applied in

    def _q_like(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        if key not in self._cast:
            self._cast[key] = self._q.to(x.device, x.dtype)
        return self._cast[key]

    def rotate_columns(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self._q_like(x).T

    def rotate_rows(self, x: torch.Tensor) -> torch.Tensor:
        return self._q_like(x) @ x

    def rotated_variances(self, gram: torch.Tensor) -> torch.Tensor:
        q = self._q_like(gram)
        return ((q @ gram) * q).sum(dim=1)

    def dense(self) -> torch.Tensor:
        return self._q


class FastRotation:
    """Q = B_R P_R ... B_1 P_1: random permutations P_t, block-diagonal Haar B_t (module docstring);
    the methods are those of `Rotation`. Build it through `rotation` (its QRs on one thread).

    Parameters
    ----------
    size : int >= 1
    seeds : SeedSequence, the rotation's key; the permutations and every block derive from it
    block : int >= 1, default=BLOCK, largest block
    """

    def __init__(self, size: int, seeds: np.random.SeedSequence, block: int = BLOCK):
        self.size = size
        count = -(-size // block)  # blocks per round
        small, big = divmod(size, count)  # `big` blocks of small + 1 units, then blocks of `small`
        self._groups = [(k, s) for k, s in ((big, small + 1), (count - big, small)) if k]
        rounds = 1 if count == 1 else math.ceil(math.log(size) / math.log(block)) + 2
        block_seeds = iter(_torch_seeds(seeds, 1 + rounds * count))
        generator = torch.Generator().manual_seed(next(block_seeds))
        # per round: (permutation [size], [blocks [k, s, s] float64 per group])
        self._rounds = [(torch.randperm(size, generator=generator),
                         [torch.stack([haar_rotation(s, next(block_seeds)) for _ in range(k)])
                          for k, s in self._groups])
                        for _ in range(rounds)]

    def rotate_columns(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x.T.contiguous(), self._rounds).T.contiguous()

    def rotate_rows(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, self._rounds)

    def rotated_variances(self, gram: torch.Tensor) -> torch.Tensor:
        # Y = Q' G Q'^T for the first R - 1 rounds (Q' = I when R = 1), then diag(B P Y P^T B^T) needs
        # only the diagonal blocks of P Y P^T: for each block B_j on units I_j, diag(B_j Y[I_j, I_j] B_j^T).
        first, (perm, blocks) = self._rounds[:-1], self._rounds[-1]
        y = gram
        if first:
            y = self._apply(self._apply(gram, first).T.contiguous(), first)
        out, start = [], 0
        for (k, s), b in zip(self._groups, blocks):
            units = perm[start:start + k * s].to(y.device).view(k, s)
            sub = y[units[:, :, None], units[:, None, :]]  # [k, s, s]
            b = b.to(y.device, y.dtype)
            out.append(((b @ sub) * b).sum(dim=2).reshape(-1))
            start += k * s
        return torch.cat(out)

    def dense(self) -> torch.Tensor:
        return self.rotate_rows(torch.eye(self.size, dtype=torch.float64))

    def _apply(self, x: torch.Tensor, rounds) -> torch.Tensor:
        """Q @ x over `rounds`: x [size, cols] -> [size, cols] contiguous, in x's dtype and device."""
        # Two buffers used in turn: fresh ones each round cost more in page faults than the products at n ~ 1536.
        permuted = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        out = torch.empty_like(permuted)
        for perm, blocks in rounds:
            torch.index_select(x, 0, perm.to(x.device), out=permuted)
            start = 0
            for (k, s), b in zip(self._groups, blocks):
                stop = start + k * s
                torch.matmul(b.to(x.device, x.dtype), permuted[start:stop].view(k, s, x.shape[1]),
                             out=out[start:stop].view(k, s, x.shape[1]))
                start = stop
            x = out
        return x


class RotationSet:
    """Rotations r in `indices` of one unit set (`rotation` keys seed, unit set index, r, size), shared by
    every model that has the set, applied many at a time with each rotated unit scaled (the baseline's 1/std).

    Dense (Haar) rotations are held stacked, float64 [R n, n] (rows i n .. i n + n - 1 hold the i-th), so a
    chunk of them is one GEMM with its scales folded into Q's rows: C (D_r Q_r)^T for every r at once.

    Parameters
    ----------
    kind : {'auto', 'haar', 'fast'}
    seed, unit_set_index : int >= 0
    size : int >= 1, the set's width n
    indices : range of rotation indices r >= 0 (R of them)
    """

    def __init__(self, kind: str, seed: int, unit_set_index: int, size: int, indices: range):
        drawn = [rotation(kind, seed, unit_set_index, r, size) for r in indices]
        self.size, self.count = size, len(drawn)
        dense = all(isinstance(q, HaarRotation) for q in drawn)
        self.stacked = torch.cat([q.dense() for q in drawn]) if dense else None  # [R n, n]
        self.structured = None if self.stacked is not None else drawn  # fast rotations, applied one by one
        self._cast: dict[tuple, torch.Tensor] = {}  # `stacked` in each (device, dtype) it has been applied in

    def rotated_variances(self, gram: torch.Tensor) -> torch.Tensor:
        """diag(Q_r G Q_r^T) for every r: float64 [R, n], for a symmetric Gram G [n, n] float64."""
        if self.structured is not None:
            return torch.stack([q.rotated_variances(gram) for q in self.structured])
        step = max(1, _STACKED_ENTRIES // self.size**2)
        out = []
        for r0 in range(0, self.count, step):
            q = self.stacked[r0 * self.size:min(r0 + step, self.count) * self.size].to(gram.device)  # [c n, n]
            out.append(((q @ gram) * q).sum(dim=1))
        return torch.cat(out).view(self.count, self.size)

    def rotate_columns(self, x: torch.Tensor, scales: torch.Tensor, chunk: slice) -> torch.Tensor:
        """x Q_r^T with rotated unit k scaled by scales[r, k], for r in `chunk` (positions in `indices`):
        x [rows, n], scales float64 [R, n] -> [rows, c, n] in x's dtype and device."""
        if self.structured is None:
            return (x @ self._scaled_stack(scales, chunk, x).T).view(x.shape[0], -1, self.size)
        out = torch.stack([q.rotate_columns(x) for q in self.structured[chunk]], dim=1)
        return out.mul_(scales[chunk].to(x))

    def rotate_rows(self, x: torch.Tensor, scales: torch.Tensor, chunk: slice) -> torch.Tensor:
        """Q_r x with rotated unit k scaled by scales[r, k], for r in `chunk` (positions in `indices`):
        x [n, columns], scales float64 [R, n] -> [c, n, columns] in x's dtype and device."""
        if self.structured is None:
            return (self._scaled_stack(scales, chunk, x) @ x).view(-1, self.size, x.shape[1])
        out = torch.stack([q.rotate_rows(x) for q in self.structured[chunk]])
        return out.mul_(scales[chunk].to(x)[:, :, None])

    def _scaled_stack(self, scales: torch.Tensor, chunk: slice, like: torch.Tensor) -> torch.Tensor:
        """D_r Q_r stacked for r in `chunk`, in `like`'s dtype and device: [c n, n]."""
        key = (like.device, like.dtype)
        if key not in self._cast:
            self._cast[key] = self.stacked.to(like)
        rows = slice(chunk.start * self.size, chunk.stop * self.size)
        return self._cast[key][rows] * scales[chunk].to(like).reshape(-1, 1)


def rotation(kind: str, seed: int, unit_set_index: int, rotation_index: int, size: int) -> Rotation:
    """The rotation `rotation_index` of the unit set `unit_set_index` (of `size` units).

    Determined by (seed, unit_set_index, rotation_index, size) alone, so one Q is drawn once and
    reused for every model that has this unit set; different keys give independent rotations.

    Parameters
    ----------
    kind : {'auto', 'haar', 'fast'}  ('auto': `_defaults.rotation_kind_for`)
    seed, unit_set_index, rotation_index : int >= 0
    size : int >= 1, the unit set's width n

    Returns
    -------
    HaarRotation or FastRotation, of `size` units.
    """
    if kind not in ROTATION_KINDS:
        raise UniversalityError(f"unknown rotation kind {kind!r}; choose one of: {', '.join(ROTATION_KINDS)}")
    kind = rotation_kind_for(kind, size)
    seeds = np.random.SeedSequence([seed, unit_set_index, rotation_index, size])
    with torch_threads(_QR_THREADS):
        if kind == "fast":
            return FastRotation(size, seeds)
        return HaarRotation(haar_rotation(size, _torch_seeds(seeds, 1)[0]))


def _torch_seeds(seeds: np.random.SeedSequence, count: int) -> list[int]:
    """`count` 63-bit torch seeds from a SeedSequence."""
    state = seeds.generate_state(2 * count)
    return [int(high) << 31 | int(low) >> 1 for high, low in zip(state[0::2], state[1::2])]
