"""The refine pass of sketch-and-refine: over every token, the means and variances of all units and
the co-moments of the candidate unit pairs only, exact and merged by Chan's update.

State (global unit indices, models in stream order, unit sets concatenated):

| name         | shape            | meaning                                                          |
|--------------|------------------|------------------------------------------------------------------|
| `count_`     | int              | tokens seen                                                      |
| `mean_`      | float64 [units]  | mean of the scaled activations x_i * scale_i                     |
| `variance_`  | float64 [units]  | sum of squared deviations from the mean (scaled)                 |
| `comoment_`  | float64 [pairs]  | sum (x_i - mean_i)(x_j - mean_j) (scaled) for each pair (i, j)   |
| `row_comoment_` | float64 [rows, units] | the same for each unit i of `rows` and every unit j of the   |
|              |                  | other models (0 in its own)                                      |

Each batch is centred on its own mean (a float32 mean subtracted in float32, then scaled; the residual
mean, float64, is taken out of the products exactly: sum (d_i - r_i)(d_j - r_j) = sum d_i d_j - n r_i
r_j), its pair products are added, then Chan's correction (n_a n_b / n) delta_i delta_j for the shift of
means. The products are sampled dense-dense matrix products per tile of `_TOKENS` tokens, one per block
of `_COLUMN_BLOCK` columns (`torch.sparse.sampled_addmm` on that block's pairs as a CSR pattern): a dot
product of two contiguous rows per pair, read from a [units, tokens] tile that stays in cache, instead
of a gather of [pairs, tokens] rows (10-60x slower in measurements). Every unit is multiplied by a power
of two (`scale`, exact) that brings its spread near 1, so float32 products neither overflow nor
underflow; correlations do not depend on it. The rows of `rows` (units whose rotation baseline the
sketch makes exact) are dense GEMMs per batch, each model's rows against the other models' units, [rows,
tokens] x [tokens, units], added into a float32 partial sum; the per-batch corrections are rank one (the
residual means, Chan's shift), so they are kept as factors, and every `_ROW_FOLD_TOKENS` tokens (and at
`end_stream`) the partial sum and one GEMM of the factors fold into the float64 `row_comoment_`. Folding
every batch instead cost about as much as the GEMMs themselves at 1024-token batches: six passes over
[rows, units] float64.

A row with an atom a_i (a value the unit takes on almost every token: a ReLU's 0, a latent's floor) runs
over the other tokens only: e_i = x_i - a_i (scaled) is exactly 0 on the atom, so its products are one
sparse-dense product per batch, [sparse rows, tokens] (CSR) x [tokens, units], at a cost proportional to
how often the unit leaves its atom. They equal the centred products exactly: with c_i = e_i - (m_i - a_i)
the batch-centred unit, sum_t c_i c_j = sum_t e_i c_j - (m_i - a_i) n r_j, one more rank-one factor.
Measured at 2456 rows leaving their atom on 1%, 0.1% and 0.01% of 1024-token batches against 32768 units
(2 threads): 0.06 ms per token, against 0.93 as dense GEMM rows.
"""

from __future__ import annotations

import warnings

import torch

from .._defaults import is_dead
from .._threads import map_single_threaded
from ..errors import UniversalityError
from ..moments import normalize_batch
from ..moments._accumulator import DEVICE_CHECK_EVERY
from ..moments._checks import DeferredChecks

__all__ = ["CandidateMoments"]

_TOKENS = 128  # tokens per product tile: [units, 128] float32 is 16 MB at 32768 units, within L3
# Units per column block of the sampled products: a pair reads its row's unit in order (pairs sorted by
# row) and its column's unit at random, from the block's [4096, 128] float32 = 2 MB (one core's L2 here)
# rather than from the whole tile. Measured at 4 x 8192 units, 786k pairs, one thread (medians of 3):
# 0.174 ms per token unblocked, 0.133 in blocks of 4096.
_COLUMN_BLOCK = 4096
# The two checks of every batch, as `DeferredChecks` words them: (the problem, its fix).
_CHECKS = (("has NaN or inf activations (or beyond float32 range)", "pass finite values"),
           ("has activations beyond float32 range relative to their subsample spread (a unit the subsample barely "
            "saw)", "multiply them by a constant or raise subsample"))
# The sampled products run on single-threaded workers, one per torch thread, each over its share of the
# tiles (`map_single_threaded`). Their work is many small memory-bound ops (per tile a transpose, a sampled
# product, sums), each of which would wait for every thread of a multi-threaded op to be scheduled: on
# this shared 2-core machine, 1 thread ran them at 0.17 ms per token (4 x 8192 units, 786k pairs) and 2
# threads at 1.04 ms. The rows' GEMM runs on the caller's threads.
# tokens whose row products are summed in float32 before they fold into float64 (at most 2**15 centred,
# unit-spread products per entry: float32 keeps them to ~1e-6 relative, as an exact pass's batch GEMMs)
_ROW_FOLD_TOKENS = 2**15
_FOLD_ROWS = 256  # rows folded at a time where only some rows are dense (or sparse): float64 temporaries


class CandidateMoments:
    """Streams batches into the means, variances and candidate-pair co-moments (module docstring).

    Parameters
    ----------
    layout : {model: {unit_set: units}}
    pairs : int64 Tensor [pairs, 2]
        Global unit indices (row < column), sorted by row then column (`TopCandidates.pairs`).
    scale : float64 Tensor [units]
        Powers of two multiplying each unit before its products.
    device : str, default='cpu'
    rows : int64 Tensor [rows], optional
        Global indices (sorted) of units whose co-moments with every unit of the other models are
        accumulated (`row_comoment_`).
    atoms : float64 Tensor [rows], optional
        Each row's atom (module docstring), in the units' own scale; NaN: a dense row (GEMM over every
        token). Any value is exact; an atom the unit rarely leaves makes its row cheap.
    check_every : int >= 1 or None, default=None
        When each batch's checks (finite activations, products within float32) are read. None: at once
        on CPU (a bad batch raises before it is added), and every `DEVICE_CHECK_EVERY` batches elsewhere,
        where a read stalls the stream; an int: every `check_every` batches. Deferred checks stay on the
        device (`moments._checks.DeferredChecks`) and are read again by `check` and `end_stream`; a bad
        batch is then named, and the pass must stream again.

    >>> import torch
    >>> x = torch.randn(50, 2)
    >>> acc = CandidateMoments({"a": {"u": 1}, "b": {"u": 1}}, torch.tensor([[0, 1]]), torch.ones(2))
    >>> acc = acc.update({"a": {"u": x[:, :1]}, "b": {"u": x[:, 1:]}})
    >>> bool(torch.isclose(acc.correlation()[0], torch.corrcoef(x.T.double())[0, 1]))
    True
    """

    def __init__(self, layout: dict, pairs: torch.Tensor, scale: torch.Tensor, device: str = "cpu",
                 rows: torch.Tensor | None = None, atoms: torch.Tensor | None = None, check_every: int | None = None):
        if check_every is not None and (type(check_every) is not int or check_every < 1):
            raise UniversalityError(f"check_every must be a positive int or None, got {check_every!r}")
        self.layout = {model: dict(sets) for model, sets in layout.items()}
        self.total_units = sum(sum(sets.values()) for sets in self.layout.values())
        self.device = device
        self.pairs = pairs.to(device)
        self._rows, self._columns = (self.pairs[:, k].clone(memory_format=torch.contiguous_format) for k in (0, 1))
        self.scale = scale.to(device, torch.float32)
        self._patterns, order = [], []  # per column block: (first column, last + 1, CSR pattern of its pairs)
        for start in range(0, self.total_units, _COLUMN_BLOCK):
            stop = min(start + _COLUMN_BLOCK, self.total_units)
            inside = torch.nonzero((self._columns >= start) & (self._columns < stop)).flatten()
            if len(inside):
                self._patterns.append((start, stop, _pattern(self._rows[inside], self._columns[inside] - start,
                                                             (self.total_units, stop - start))))
                order.append(inside)
        # the products come block by block; `_unblock` puts them back in the order of `pairs`
        self._unblock = torch.argsort(torch.cat(order)) if order else torch.zeros(0, dtype=torch.int64, device=device)
        self.count_ = 0
        self.mean_ = torch.zeros(self.total_units, dtype=torch.float64, device=device)
        self.variance_ = torch.zeros_like(self.mean_)
        self.comoment_ = torch.zeros(len(self.pairs), dtype=torch.float64, device=device)
        self.rows = (torch.zeros(0, dtype=torch.int64) if rows is None else rows).to(device)
        atoms = torch.full((len(self.rows),), torch.nan, dtype=torch.float64) if atoms is None else atoms
        sparse = ~torch.isnan(atoms.cpu())
        self._dense_at, self._sparse_at = (torch.nonzero(side).flatten().to(device) for side in (~sparse, sparse))
        self._sparse_units = self.rows[self._sparse_at]  # [sparse rows], global
        self._sparse_scale = self.scale[self._sparse_units]
        self._sparse_atoms = (atoms.to(device)[self._sparse_at] * scale.to(device)[self._sparse_units]).float()
        self._sparse_columns = _local_columns(self.layout, self._sparse_units.cpu())
        self._row_total = torch.zeros(len(self.rows), self.total_units, dtype=torch.float64, device=device)
        ends = torch.tensor([sum(sets.values()) for sets in self.layout.values()]).cumsum(0).tolist()
        # (first row, last + 1, first unit of its model, last + 1) per model: of all rows (own-model blocks are
        # zeroed at each fold), and of the dense rows among them (`_dense_at` positions: their GEMMs)
        self._row_blocks, self._row_models = (
            [(r0, r1, m0, m1) for r0, r1, m0, m1 in zip(cut, cut[1:], [0] + ends, ends) if r1 > r0]
            for cut in (torch.searchsorted(r, torch.tensor([0] + ends)).tolist()
                        for r in (self.rows.cpu(), self.rows[self._dense_at].cpu())))
        # float32 partial sums of the dense and of the sparse rows' products (positions `_dense_at`, `_sparse_at`)
        self._row_partial = [torch.zeros(len(at), self.total_units, dtype=torch.float32, device=device)
                             for at in (self._dense_at, self._sparse_at)]
        self._row_factors: list[tuple[torch.Tensor, torch.Tensor]] = []  # (u [rows], v [units]): u v^T to add
        self._row_tokens = 0  # tokens in `_row_partial` and `_row_factors`
        self._scratch = None
        sizes = torch.tensor([size for sets in self.layout.values() for size in sets.values()])
        self._set_of_unit = torch.repeat_interleave(torch.arange(len(sizes)), sizes).to(device)  # [units]
        every = DEVICE_CHECK_EVERY if check_every is None and torch.device(device).type != "cpu" else check_every
        self._deferred = None if every is None else DeferredChecks(
            [(model, name) for model, sets in self.layout.items() for name in sets], every, device, kinds=_CHECKS,
            again="stream again")
        self.batches_ = 0

    def update(self, batch) -> "CandidateMoments":
        """Add one batch `{model: {unit_set: Tensor[tokens, units]}}`; returns self."""
        models = normalize_batch(batch, self.layout)
        tokens = next(iter(next(iter(models.values())).values())).shape[0]
        if tokens == 0:
            return self
        centred, mean, finite = self._centre(models, tokens)  # float32 [tokens, units], float64 [units], [sets]
        residual = centred.sum(dim=0).double() / tokens  # [units], ~eps32 |mean|: float32 suffices
        starts = range(0, tokens, _TOKENS)
        workers = torch.get_num_threads() if torch.device(self.device).type == "cpu" else 1
        parts = map_single_threaded(lambda k: self._tile_products(centred, starts[k::workers]), range(workers),
                                    workers)
        products, squares = (sum(side) for side in zip(*parts))
        i, j = self._rows, self._columns
        products -= tokens * residual[i] * residual[j]
        squares -= tokens * residual.square()
        float32_mean, mean = mean, mean + residual
        if self._deferred is None and not all(bool(torch.isfinite(x).all()) for x in (products, squares)):
            raise _beyond_float32()
        failed = None if self._deferred is None else self._failed(finite, products, squares)
        weight = self.count_ * tokens / (self.count_ + tokens)  # Chan's update
        delta = mean - self.mean_
        self.comoment_ += products + weight * delta[i] * delta[j]
        if len(self.rows):
            self._add_row_products(centred, models, float32_mean, residual)
            self._row_factors += [(-tokens * residual[self.rows], residual), (weight * delta[self.rows], delta)]
            self._row_tokens += tokens
            if self._row_tokens >= _ROW_FOLD_TOKENS:
                self._fold_rows()
        self.variance_ += squares + weight * delta.square()
        self.mean_ += delta * (tokens / (self.count_ + tokens))
        self.count_ += tokens
        self.batches_ += 1
        if failed is not None and self._deferred.add(failed, self.batches_ - 1):
            self.check()
        return self

    def check(self) -> "CandidateMoments":
        """Read the deferred checks of the batches added since the last read (one host read); raises one
        line naming the first bad batch. Nothing to read when each batch was checked at once. Returns self."""
        if self._deferred is not None:
            self._deferred.read(self.batches_)
        return self

    @property
    def row_comoment_(self) -> torch.Tensor:
        """float64 [rows, units] (module docstring), with every batch so far folded in."""
        self._fold_rows()
        return self._row_total

    def correlation(self) -> torch.Tensor:
        """Pearson correlation of every pair over the stream, float64 [pairs]; NaN where a unit is dead."""
        inverse = self.variance_.rsqrt()
        inverse[is_dead(self.variance_ / max(self.count_, 1), self.mean_)] = float("nan")
        return self.comoment_ * inverse[self._rows] * inverse[self._columns]

    def end_stream(self) -> "CandidateMoments":
        """Fold what the rows hold in float32 into `row_comoment_`, and free the batch scratch matrix and the
        partial sum once the stream is done, after reading the deferred checks; returns self."""
        self.check()
        self._fold_rows()
        self._scratch, self._row_partial = None, [None, None]
        return self

    def _failed(self, finite: torch.Tensor, products: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
        """bool [unit sets, 2] on the device, read nothing: a non-finite batch mean; a non-finite sum of squares
        or product of one of the set's units (`_CHECKS`)."""
        bad = (~torch.isfinite(squares)).long()  # [units]
        wrong = (~torch.isfinite(products)).long()  # [pairs]
        bad.index_add_(0, self._rows, wrong).index_add_(0, self._columns, wrong)
        per_set = torch.zeros(len(finite), dtype=torch.long, device=bad.device).index_add_(0, self._set_of_unit, bad)
        return torch.stack([~finite, per_set > 0], dim=1)

    def _tile_products(self, centred: torch.Tensor, starts: range) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidate pairs' products float64 [pairs] and the units' sums of squares float64 [units] over
        the tiles of `_TOKENS` tokens of `centred` [tokens, units] beginning at `starts`."""
        products, squares = torch.zeros_like(self.comoment_), torch.zeros_like(self.mean_)  # products block by block
        for start in starts:
            tile = centred[start:start + _TOKENS].T.contiguous()  # [units, tile tokens]
            done = 0
            for c0, c1, pattern in self._patterns:
                values = torch.sparse.sampled_addmm(pattern, tile, tile[c0:c1].T, beta=0.0).values()
                products[done:done + len(values)] += values
                done += len(values)
            squares += torch.linalg.vector_norm(tile, dim=1).double().square()
        return products[self._unblock], squares

    def _add_row_products(self, centred: torch.Tensor, models: dict, mean: torch.Tensor, residual: torch.Tensor
                          ) -> None:
        """Add the rows' products over one batch into the float32 partial sums. Dense rows: with the other models'
        units only, two GEMMs per model, [its rows, tokens] x [tokens, the units before / after it]. Sparse rows:
        one CSR product over the tokens off their atoms, with every unit (own model dropped at the fold), and
        their rank-one factor -(m - a) n r (module docstring; `mean` m float64 [units], scaled, the batch's
        float32 mean, `residual` r the centred batch's mean)."""
        dense, sparse = self._row_partial
        for r0, r1, m0, m1 in self._row_models:
            picked = centred[:, self.rows[self._dense_at[r0:r1]]].T  # [dense rows of the model, tokens]
            dense[r0:r1, :m0].addmm_(picked, centred[:, :m0])
            dense[r0:r1, m1:].addmm_(picked, centred[:, m1:])
        if not len(self._sparse_at):
            return
        off_atom = torch.cat([models[model][name][:, inside.to(models[model][name].device)].float()
                              for model, name, inside in self._sparse_columns], dim=1).to(self.device)
        off_atom.mul_(self._sparse_scale).sub_(self._sparse_atoms)  # [tokens, sparse rows], exactly 0 on the atom
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            torch.addmm(sparse, off_atom.T.to_sparse_csr(), centred, out=sparse)
        shift = torch.zeros(len(self.rows), dtype=torch.float64, device=self.device)
        shift[self._sparse_at] = -centred.shape[0] * (mean[self._sparse_units] - self._sparse_atoms.double())
        self._row_factors.append((shift, residual))

    def _fold_rows(self) -> None:
        """row_comoment_ += the float32 partial sums + the rank-one corrections held as factors (one GEMM), its
        own-model blocks left at 0; then start new partial sums."""
        if not self._row_tokens:
            return
        if not all(bool(torch.isfinite(partial).all()) for partial in self._row_partial):
            raise _beyond_float32()
        for at, partial in zip((self._dense_at, self._sparse_at), self._row_partial):
            if len(at) == len(self.rows):
                self._row_total += partial  # float32 -> float64 elementwise, no [rows, units] temporary
            else:
                for k in range(0, len(at), _FOLD_ROWS):  # float64 temporaries of at most _FOLD_ROWS rows
                    self._row_total.index_add_(0, at[k:k + _FOLD_ROWS], partial[k:k + _FOLD_ROWS].double())
            partial.zero_()
        u, v = (torch.stack(side, dim=1) for side in zip(*self._row_factors))  # [rows, factors], [units, factors]
        self._row_total.addmm_(u, v.T)
        for r0, r1, m0, m1 in self._row_blocks:
            self._row_total[r0:r1, m0:m1] = 0  # a row's own model is never read
        self._row_factors, self._row_tokens = [], 0

    def _centre(self, models: dict, tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch centred on its float32 mean, then scaled, as float32 [tokens, units] (a scratch
        matrix reused across batches), that mean float64 [units] (scaled), and whether each unit set's
        mean is finite, bool [unit sets] (read here unless the checks are deferred)."""
        if self._scratch is None or self._scratch.shape[0] < tokens:
            self._scratch = torch.empty(tokens, self.total_units, dtype=torch.float32, device=self.device)
        centred, means, finite, start = self._scratch[:tokens], [], [], 0
        for model, sets in self.layout.items():
            for name, size in sets.items():
                x = models[model][name].to(self.device)
                mean = x.sum(dim=0, dtype=torch.float32) / tokens
                finite.append(torch.isfinite(mean).all())
                if self._deferred is None and not bool(finite[-1]):
                    raise UniversalityError(f"model {model!r}, unit set {name!r} has NaN or inf activations (or "
                                            "beyond float32 range); pass finite values")
                block = centred[:, start:start + size]
                torch.sub(x, mean, out=block).mul_(self.scale[start:start + size])
                means.append(mean * self.scale[start:start + size])
                start += size
        return centred, torch.cat(means).double(), torch.stack(finite)


def _pattern(rows: torch.Tensor, columns: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The pairs (rows[k], columns[k]), sorted by row then column, as a CSR pattern of `size` (values unused)."""
    ends = torch.bincount(rows, minlength=size[0]).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": sampled_addmm is all we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.cat([ends.new_zeros(1), ends]), columns,
                                       torch.zeros(len(rows), device=rows.device), size=size, check_invariants=True)


def _local_columns(layout: dict, units: torch.Tensor) -> list[tuple[str, str, torch.Tensor]]:
    """(model, unit set, the indices inside it) of the global units `units` (sorted, CPU), in their order; the
    sets holding none left out."""
    parts, start = [], 0
    for model, sets in layout.items():
        for name, size in sets.items():
            inside = units[(units >= start) & (units < start + size)] - start
            if len(inside):
                parts.append((model, name, inside))
            start += size
    return parts


def _beyond_float32() -> UniversalityError:
    return UniversalityError("activations beyond float32 range relative to their subsample spread (a unit the "
                             "subsample barely saw); multiply them by a constant or raise subsample")
