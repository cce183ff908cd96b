"""Sketch and refine (DESIGN.md, "Scale"): universality for widths where even a memory-budgeted
exact pass is too slow.

1) Sketch: the exact comparison (`run_plan`, same plans and blocks) on a seeded subsample of the
   tokens: a fraction `subsample` of every batch, drawn by a generator seeded by (seed, batch index),
   so every pass sees the same rows. Beside the max, every cross block is reduced to each unit's
   top-m candidate partners in every other model (`TopCandidates`). The rotation baseline is kept
   from this pass, with the subsample's sampling noise taken out (see `compare_sketch`).
2) Refine: every token once more, accumulating only the candidate pairs' co-moments (about
   M (M - 1) U m of them) plus every unit's mean and variance (`CandidateMoments`). Max correlation
   and partner are then exact over all tokens, the max taken over a unit's candidate pairs; for the
   units whose full rows pass 2 also accumulates, over every unit of the other model: the units near the
   threshold, and the units the subsample barely saw move (a sparse unit's candidates are noise), whose
   rows cost only the tokens where they leave their atom (`CandidateMoments(atoms=...)`).

`subsample` is a fraction, not a token count: a stream's length is unknown until it ends (an
iterator, a callable re-running models), so only a fraction can be applied to each batch on its own,
from (seed, batch index) alone; it also states pass 1's cost directly (that fraction of an exact pass).
"""

from __future__ import annotations

import itertools
import numbers
import warnings

import numpy as np
import torch

from .._defaults import is_dead
from ..errors import UniversalityError, short_repr
from ..moments import DEFAULT_BUDGET_FRACTION, available_memory, normalize_batch, plan_passes
from . import _sketch_baselines
from ._candidates import TopCandidates
from ._comparison import Comparison
from ._maxima import PairMaxima, baseline_scales
from ._passes import stream_passes
from ._refine import CandidateMoments
from ._sketch_baselines import denoised_baseline, exact_row_baselines, margin_for, units_near_threshold
from ._universality import tables_from_maxima

__all__ = ["compare_sketch", "check_sketch_settings", "subsample_rows", "DEFAULT_SUBSAMPLE", "DEFAULT_CANDIDATES",
           "MIN_SEEN_TOKENS", "sketch_rules"]

DEFAULT_SUBSAMPLE = 0.02  # pass 1 costs 2% of an exact pass
DEFAULT_CANDIDATES = 8
# A unit is barely seen when fewer subsample tokens than this sit off its floor and ceiling: its
# subsample correlations rest on so few tokens (standard error >= 1/sqrt(32) = 0.18) that they
# cannot rank its partners.
MIN_SEEN_TOKENS = 32
# Bytes per unit of one full row in pass 2: its float64 total and its float32 partial sum
# (`CandidateMoments.row_comoment_`).
_ROW_BYTES = 12
_SUBSAMPLE_KEY = 0x5B5A  # keeps subsample seeds apart from rotation seeds (both SeedSequence words)


def sketch_rules() -> dict:
    """The fixed rules that shape a sketch's tables beyond its settings (the band around the threshold whose
    units get full rows, the tokens that make a unit seen, and that the units seen on fewer get full rows).
    Run fingerprints hold them, so a run saved under other rules is computed again rather than reused."""
    return {"band_margin_scale": _sketch_baselines.MARGIN_SCALE, "min_seen_tokens": MIN_SEEN_TOKENS,
            "barely_seen_get_full_rows": True}


def check_sketch_settings(mode: str, subsample, candidates) -> tuple[float | None, int | None]:
    """(subsample, candidates) checked, with the defaults filled in for mode='sketch' (None, None for
    'exact'); one line naming a bad setting."""
    if mode not in ("exact", "sketch"):
        raise UniversalityError(f"mode must be 'exact' or 'sketch', got {short_repr(mode)}")
    if mode == "exact":
        if subsample is not None or candidates is not None:
            raise UniversalityError("subsample and candidates apply to mode='sketch' only; drop them or pass "
                                    "mode='sketch'")
        return None, None
    subsample = DEFAULT_SUBSAMPLE if subsample is None else subsample
    candidates = DEFAULT_CANDIDATES if candidates is None else candidates
    if (isinstance(subsample, bool) or not isinstance(subsample, numbers.Real) or not 0 < subsample <= 1
            or subsample != subsample):
        raise UniversalityError(f"subsample must be the fraction of tokens pass 1 keeps, in (0, 1], got "
                                f"{short_repr(subsample)}; e.g. subsample=0.02")
    if isinstance(candidates, bool) or not isinstance(candidates, numbers.Integral) or candidates < 1:
        raise UniversalityError(f"candidates must be an integer >= 1 (partners kept per unit and other model), "
                                f"got {short_repr(candidates)}; e.g. candidates=8")
    return float(subsample), int(candidates)


def subsample_rows(fraction: float, seed: int, index: int, tokens: int) -> torch.Tensor:
    """The rows of batch `index` (of `tokens` rows) in the subsample: int64 [kept], sorted. Their
    number is floor(fraction * tokens + u), u uniform in [0, 1) (fraction * tokens on average);
    everything is drawn from a generator seeded by (seed, index) only."""
    state = np.random.SeedSequence([seed, _SUBSAMPLE_KEY, index]).generate_state(2)
    generator = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    kept = int(fraction * tokens + float(torch.rand((), generator=generator, dtype=torch.float64)))
    return torch.randperm(tokens, generator=generator)[:min(kept, tokens)].sort().values


def compare_sketch(make, layout: dict, batch_tokens: int, *, subsample: float, candidates: int, threshold: float,
                   rotations: int, seed: int, device: str, dtype: str, budget: int | None,
                   rotation: str) -> Comparison:
    """Sketch and refine over the batches of `make()` (module docstring); the same `units` and
    `pairs` tables as the exact comparison, plus a `units` column `barely_seen`.

    The rotation baseline comes from the subsample: it is a null max, and what sets it is the spread of
    a unit's correlations with the rotated units of b, which a few thousand tokens estimate well,
    unlike which unit of b is the max (a statistic of the whole distribution, not of one pair). Its
    mean bias, the subsample's extra sampling noise, is taken out by `denoised_baseline`: the mean
    over units of (sketch - exact) went from +0.067 (327 subsample tokens) to +0.00003 (1308 of 65536
    tokens) at 4 x 8192 units in sets of 1024-3072 (benchmarks/bench_sketch.py). Its per-unit noise and
    per-kind bias remain, so the units within `margin_for(subsample tokens)` of the threshold after
    pass 1 get exact baselines over all tokens (`compare._sketch_baselines`; `units.baseline_exact`).
    Pass 1 therefore reduces the cross blocks to the maxima with their spreads
    (`PairMaxima(spread=True)`) beside the candidates.

    `Comparison.moments` holds the subsample's means and Grams (pass 1; its cross blocks are dropped),
    `Comparison.plan` pass 1's plan. A unit is `barely_seen` when it is live over all tokens but fewer
    than `MIN_SEEN_TOKENS` subsample tokens sit off the atoms at its floor and ceiling (a ReLU's zeros):
    its candidates rest on too few tokens, so it gets its full rows in pass 2, over the tokens off the atom
    more subsample tokens sit on, and with them exact mode's partner, max and baseline (`baseline_exact`).
    The full rows share the memory budget (without one, `DEFAULT_BUDGET_FRACTION` of the memory available),
    the least seen units first, then the units near the threshold; a warning counts the units left without them.
    """
    for model, size in ((m, sum(sets.values())) for m, sets in layout.items()):
        if candidates > size:
            smallest = min(sum(sets.values()) for sets in layout.values())
            raise UniversalityError(f"candidates={candidates} is more than the {size} units of model {model!r}; "
                                    f"choose candidates <= {smallest}")
    plan = plan_passes(layout, budget=budget, dtype=dtype, batch_tokens=batch_tokens, rotations=rotations,
                       rotation=rotation)

    total_units = sum(sum(sets.values()) for sets in layout.values())
    atoms = _Atoms(total_units, device)

    def gathered():
        """The kept rows of consecutive batches, gathered into batches of `batch_tokens` rows (a GEMM
        over a few rows runs far below peak, and every update adds into the whole state); the first
        stream also counts each unit's atoms."""
        held, count, first = [], 0, atoms.count == 0  # (a stream that kept no row counts nothing: no harm)
        for index, batch in enumerate(make()):
            models = _normalized(batch, layout, index)
            kept = subsample_rows(subsample, seed, index, _tokens(models))
            held.append({m: {s: x[kept.to(x.device)] for s, x in sets.items()} for m, sets in models.items()})
            if first:
                atoms.update(torch.cat([x.to(device, torch.float64) for sets in held[-1].values() for x in sets.values()],
                                       dim=1))
            count += len(kept)
            if count >= batch_tokens:
                yield _concatenated(held)
                held, count = [], 0
        if count:
            yield _concatenated(held)
    top, baseline = TopCandidates(layout, candidates), PairMaxima(layout, rotations, spread=True)
    scales = []

    def reduce(acc, first):
        if not scales:  # from pass 0's Grams, once
            scales.append(baseline_scales(first, rotations=rotations, seed=seed, kind=rotation))
        top.add_state(acc, first)
        for block in [b for b in acc.blocks_ if not b.is_gram]:
            baseline.add_block(block, acc.blocks_[block], scales[0])
    try:
        moments = stream_passes(plan, lambda start: itertools.islice(gathered(), start, None), device=device,
                                on_state=reduce)
    except UniversalityError as error:
        raise UniversalityError(f"pass 1 (subsample={subsample:g}): {error}") from None
    moments.is_default = False  # the cross blocks were reduced (and were the subsample's only)
    # pass 2 holds about pass 1's resident memory (batch, scratch, Grams) beside the full rows; without a budget
    # the rows take at most the default budget's share of the memory available (barely seen units can be many:
    # an SAE's dead and rare latents)
    room = int(DEFAULT_BUDGET_FRACTION * available_memory(device)) if budget is None else budget
    limit = max(0, room - sum(plan.resident.values())) // (_ROW_BYTES * total_units)
    seen = atoms.seen().cpu()
    barely = torch.nonzero(seen < MIN_SEEN_TOKENS).flatten()
    sparse = barely[seen[barely].argsort(stable=True)[:limit]].sort().values  # the least seen first
    near, left_out = units_near_threshold(top, baseline, threshold=threshold, margin=margin_for(moments.count_),
                                          subsample_tokens=moments.count_, tokens=round(moments.count_ / subsample),
                                          limit=limit - len(sparse), leave_out=sparse)
    if left_out:
        warnings.warn(f"{left_out} units within {margin_for(moments.count_):.3f} of the threshold keep the subsample's "
                      f"denoised baseline: the full rows of the {len(near)} closest fill the memory budget "
                      "(units.baseline_exact); raise memory_budget to settle them all", stacklevel=3)
    rows = torch.cat([sparse, near]).sort().values
    refine = _refine(make, layout, top.pairs(), rows, atoms.atom().cpu()[rows].where(torch.isin(rows, sparse), torch.nan),
                     moments, subsample=subsample, seed=seed, device=device)
    maxima = PairMaxima(layout, rotations).load_state_dict(
        _state(refine, baseline, exact_row_baselines(refine, moments.gram_, scales[0]), layout,
               subsample_tokens=moments.count_))
    dead = {m: part.cpu().numpy() for m, part in _split(is_dead(refine.variance_ / refine.count_, refine.mean_),
                                                        layout).items()}
    units, pairs = tables_from_maxima(maxima, dead, threshold=threshold)
    units["barely_seen"] = ~units["dead"].to_numpy() & (seen.numpy() < MIN_SEEN_TOKENS)
    units["baseline_exact"] = np.isin(np.arange(len(units)), rows.numpy())
    unsettled = units["barely_seen"] & ~units["baseline_exact"]
    if unsettled.any():
        warnings.warn(f"{int(unsettled.sum())} of {int((~units['dead']).sum())} live units moved on fewer than "
                      f"{MIN_SEEN_TOKENS} of the {moments.count_} subsample tokens and their full rows do not fit the "
                      "memory budget (units.barely_seen, not baseline_exact): their partners and baselines rest on "
                      "too few tokens; raise memory_budget or subsample", stacklevel=3)
    return Comparison(moments, units, pairs, threshold=threshold, rotations=rotations, seed=seed, plan=plan)


def _refine(make, layout: dict, pairs: torch.Tensor, rows: torch.Tensor, atoms: torch.Tensor, moments, *,
            subsample: float, seed: int, device: str) -> CandidateMoments:
    """Pass 2 over every batch: the candidates' moments and the full rows of the units `rows` (sparse where
    `atoms` holds their atom, `CandidateMoments`); checks that the subsample is pass 1's."""
    variance = torch.cat([moments.variance(m) for m in layout]) / moments.count_
    spread = variance.sqrt()
    exponent = torch.frexp(spread).exponent  # spread = f 2^e, f in [1/2, 1)
    scale = torch.where((spread > 0) & torch.isfinite(spread), torch.ldexp(torch.ones_like(spread), -exponent), 1.0)
    refine = CandidateMoments(layout, pairs, scale, device=device, rows=rows, atoms=atoms)
    total = torch.zeros(len(scale), dtype=torch.float64, device=device)  # the subsample's sum, read at the end
    count = index = 0  # by hand, and each batch let go before the next is built (enumerate would hold it)
    for batch in make():
        models = _normalized(batch, layout, index, "pass 2 (refine), ")
        try:
            refine.update(models)
        except UniversalityError as error:
            raise UniversalityError(f"pass 2 (refine), batch {index}: {error}") from None
        kept = subsample_rows(subsample, seed, index, _tokens(models))
        total += torch.cat([x[kept.to(x.device)].to(device, torch.float64).sum(dim=0) for sets in models.values()
                            for x in sets.values()])
        count += len(kept)
        del batch, models
        index += 1
    try:
        refine.end_stream()  # reads the checks it deferred (off CPU)
    except UniversalityError as error:
        raise UniversalityError(f"pass 2 (refine): {error}") from None
    mean = torch.cat([moments.mean_[m].cpu() for m in layout])
    gap = (total.cpu() / max(count, 1) - mean).abs()
    if count != moments.count_ or bool((gap > 1e-5 * spread.cpu() + 1e-6 * mean.abs() + 1e-30).any()):
        raise UniversalityError(f"pass 2 (refine) saw other batches than pass 1 ({count} subsample tokens, "
                                f"pass 1 had {moments.count_}); the batches must be the same in every pass")
    return refine


class _Atoms:
    """Per unit over pass 1's subsample: floor and ceiling, and how many tokens sit exactly on each; on `device`,
    read only at the end (no host read per batch)."""

    def __init__(self, units: int, device: str = "cpu"):
        self.count = 0
        self.low = torch.full((units,), torch.inf, dtype=torch.float64, device=device)
        self.high = -self.low
        self.at_low = torch.zeros(units, dtype=torch.int64, device=device)
        self.at_high = torch.zeros(units, dtype=torch.int64, device=device)

    def update(self, x: torch.Tensor) -> None:
        """Add the subsample rows x float64 [rows, all units]."""
        if x.shape[0] == 0:
            return
        for bound, at, pick in ((self.low, self.at_low, torch.amin), (self.high, self.at_high, torch.amax)):
            value = pick(x, dim=0)
            hits = (x == value).sum(dim=0)
            same, new = value == bound, pick(torch.stack([value, bound]), dim=0) != bound
            at.copy_(torch.where(new, hits, torch.where(same, at + hits, at)))
            bound.copy_(torch.where(new, value, bound))
        self.count += x.shape[0]

    def seen(self) -> torch.Tensor:
        """Subsample tokens off the floor and ceiling atoms, int64 [units] (0: never moved)."""
        return self.count - torch.maximum(self.at_low, self.at_high)

    def atom(self) -> torch.Tensor:
        """The value of the atom more tokens sit on, floor or ceiling, float64 [units] (inf: no token yet)."""
        return torch.where(self.at_low >= self.at_high, self.low, self.high)


def _state(refine: CandidateMoments, baseline: PairMaxima, exact: dict, layout: dict, *, subsample_tokens: int
           ) -> dict[str, torch.Tensor]:
    """A `PairMaxima.state_dict`: max correlation and partner over each unit's candidate pairs and the
    other model's units with full rows, whose rows hold their correlation with every unit (`_column_maxima`;
    ties: the lower partner index, as the exact max) or, for the units of `exact`, over their own full rows
    (`_row_maxima`), baselines from the subsample's maxima (`baseline`)
    with its sampling noise taken out (`denoised_baseline`), except the units of `exact`
    (`exact_row_baselines`), whose baselines are over all tokens."""
    corr = torch.nan_to_num(refine.correlation(), nan=-torch.inf).cpu().numpy()
    rows, columns = (refine.pairs[:, k].cpu().numpy() for k in (0, 1))
    offsets = np.cumsum([0] + [sum(sets.values()) for sets in layout.values()])
    model_of = np.searchsorted(offsets, np.arange(offsets[-1]), side="right") - 1
    names, state = list(layout), {}
    for ia, a in enumerate(names):
        for ib, b in enumerate(names):
            if a == b:
                continue
            units, partners = (rows, columns) if ia < ib else (columns, rows)
            where = (model_of[units] == ia) & (model_of[partners] == ib)
            unit, partner, value = units[where] - offsets[ia], partners[where] - offsets[ib], corr[where]
            order = np.lexsort((partner, -value, unit))  # per unit: largest value first, then lowest partner
            unit, partner, value = unit[order], partner[order], value[order]
            first = np.unique(unit, return_index=True)[1]
            best = np.full(offsets[ia + 1] - offsets[ia], -np.inf)
            found = np.full(best.shape, -1, dtype=np.int64)
            best[unit[first]], found[unit[first]] = value[first], partner[first]
            column_max, column_partner = _column_maxima(refine, offsets[ib], offsets[ib + 1], offsets[ia],
                                                        offsets[ia + 1])
            better = (column_max > best) | ((column_max == best) & (column_partner < found))
            best, found = np.where(better, column_max, best), np.where(better, column_partner, found)
            found[np.isneginf(best)] = -1
            state[f"max_corr/{a}/{b}"] = torch.from_numpy(best)
            state[f"partner/{a}/{b}"] = torch.from_numpy(found)
            state[f"baseline/{a}/{b}"] = denoised_baseline(baseline.baseline[a, b], baseline.rotated_moments[a, b],
                                                           subsample_tokens, refine.count_)
            if (a, b) in exact:
                settled, values = exact[a, b]
                state[f"baseline/{a}/{b}"][:, settled] = values
                row_max, row_partner = _row_maxima(refine, settled + offsets[ia], offsets[ib], offsets[ib + 1])
                state[f"max_corr/{a}/{b}"][settled], state[f"partner/{a}/{b}"][settled] = row_max, row_partner
    return state


def _row_maxima(refine: CandidateMoments, units: torch.Tensor, start: int, stop: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Max correlation float64 [n] (-inf: no live partner) and partner int64 [n] (-1: none, else the index
    among the units [start, stop) of the other model; ties: the lowest) over all tokens of the `units` (global
    indices, all in `refine.rows`) from their full rows: exact mode's max and partner, where the candidates'
    max holds only if the subsample ranked the best partner among the top m."""
    corr = _row_correlations(refine, units, start, stop)  # [n, units of the other model]
    partner = corr.argmax(axis=1)  # numpy: the first of equal maxima
    best = corr[np.arange(len(partner)), partner]
    return torch.from_numpy(best), torch.from_numpy(np.where(np.isneginf(best), -1, partner))


def _column_maxima(refine: CandidateMoments, start: int, stop: int, start_a: int, stop_a: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """For each unit of [start_a, stop_a): its max correlation float64 [units] (-inf: none) over all tokens with
    the units of [start, stop) (the other model) that have full rows, and which one, int64 (index from `start`;
    ties: the lowest; -1: none)."""
    rows = refine.rows.cpu()
    mine = rows[(rows >= start) & (rows < stop)]
    if not len(mine):
        return np.full(stop_a - start_a, -np.inf), np.full(stop_a - start_a, -1, dtype=np.int64)
    corr = _row_correlations(refine, mine, start_a, stop_a)  # [rows of the other model, units]
    which = corr.argmax(axis=0)  # the first of equal maxima: rows are sorted
    best = corr[which, np.arange(corr.shape[1])]
    return best, np.where(np.isneginf(best), -1, mine.numpy()[which] - start)


def _row_correlations(refine: CandidateMoments, units: torch.Tensor, start: int, stop: int) -> np.ndarray:
    """Correlations over all tokens of the `units` (global, all in `refine.rows`) with the units [start, stop),
    from the full rows: float64 [n, stop - start], -inf where either is dead."""
    where = torch.searchsorted(refine.rows.cpu(), units)
    inverse = refine.variance_.cpu().rsqrt()
    inverse[is_dead(refine.variance_.cpu() / refine.count_, refine.mean_.cpu())] = float("nan")
    corr = refine.row_comoment_.cpu()[where, start:stop] * inverse[units, None] * inverse[None, start:stop]
    return torch.nan_to_num(corr, nan=-torch.inf).numpy()


def _normalized(batch, layout: dict, index: int, where: str = "") -> dict:
    try:
        return normalize_batch(batch, layout)
    except UniversalityError as error:
        raise UniversalityError(f"{where}batch {index}: {error}") from None


def _concatenated(batches: list[dict]) -> dict:
    """One batch of the rows of `batches`, in order."""
    return {m: {s: torch.cat([b[m][s] for b in batches]) for s in sets} for m, sets in batches[0].items()}


def _tokens(models: dict) -> int:
    return next(iter(next(iter(models.values())).values())).shape[0]


def _split(values: torch.Tensor, layout: dict) -> dict[str, torch.Tensor]:
    """{model: its part of `values` [all units]}."""
    return dict(zip(layout, torch.split(values, [sum(sets.values()) for sets in layout.values()])))
