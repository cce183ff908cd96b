"""Sketch and refine against the exact comparison (issue 9 part 2): agreement and speedup, measured
in one run on the same stream. Not a test; prints progress and, last, one JSON line.

    .venv/bin/python benchmarks/bench_sketch.py [--tokens 16384] [--subsample 0.02] [--units 1024,2048,3072,2048]
    .venv/bin/python benchmarks/bench_sketch.py --sketch-only MS_PER_TOKEN,FIXED_S --tokens 1048576 ...

The second form runs the sketch alone on a stream too long to run exact mode here, against exact mode's
time projected from the per-token and fixed costs the first form measured (`measure_sketch_only`).

Workload: `models` models with unit sets `sets`, synthetic activations generated per batch from
(seed, batch index). Per model: a rank-16 latent shared by all models seen through model-specific
weights plus unit noise (rows of a per-model noise pool); 5% of units copy one of a set of shared
features with per-unit noise (partner correlations 0.4 to 0.9: some units universal, some near the
threshold); 10% are ReLUs of their own pre-activation firing on 5%, 1%, 0.1% or 0.01% of tokens.
The stream is generated once and held in memory (tokens x units x 4 bytes), so the runs time the
comparison; `ms_per_token_source` is what generating it cost, a price exact mode pays once and
the sketch twice (`speedup_asymptotic_with_source`).

`exact_other_rotations` holds the same agreement figures between exact mode and exact mode with
other rotations (seed + 1): the paper's rule's own noise at the threshold, the floor any sketch is
judged against. `exact_other_tokens` does the same for the partners: exact mode on an independent token
stream of the same models (token seed + 1) against the first, so `partner_changed` there is how many best
partners are a property of the tokens sampled (near ties), not of the models; its
`sketch_partner_changed_where_stable` is the sketch's partner change among the rows whose partner both
exact runs agree on. `partner_regret_*`: exact max_corr minus the sketch's, which is exact over all
tokens for the partner the sketch found, so a changed partner of nearly the same correlation (a
near tie) costs nearly nothing; `partner_regret_above_se` counts the changed partners that cost more than
1 / sqrt(tokens), one standard error of a null correlation over the whole stream: the changes the stream
itself could tell apart from a tie. `--regenerate` generates the stream on every pass instead of
holding it (its time taken out), for streams larger than memory.

Agreement is over the `pairs` rows of live units (`partner_changed`; `_seen`: without the units the
sketch flags barely_seen; max |difference| of max_corr) and over units (excess_corr, baselines,
universal sets: symmetric difference / exact's universal count); `baseline_exact` counts the units
near the threshold whose baselines the sketch made exact over all tokens (`compare._sketch_baselines`). Times are medians over `repeats`
runs of each mode, alternated. Every run is timed by phase, by wrapping the library's methods (not
by changing them): `stream` (moment updates: exact's, or the sketch's pass 1 on the subsample),
`refine` (the sketch's pass 2), `candidates` (the top-m reduction) and `fixed`, the rest: above all
the rotation baseline, then reductions and tables, none of which grows with the stream. From the
per-token and fixed costs, `projected` gives the speedup on longer streams and the stream length
where it would reach 20x.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import time
from collections import Counter

import numpy as np
import torch

from universality.compare import compare_activations
from universality.compare._candidates import TopCandidates
from universality.compare._refine import CandidateMoments
from universality.moments import MomentAccumulator

RANK, SHARED_FRACTION, SPARSE_FRACTION, POOL = 16, 0.05, 0.10, 4096
FIRING = (0.05, 0.01, 0.001, 0.0001)  # the sparse units' firing rates, in turn
Z_FIRING = {0.05: 1.645, 0.01: 2.326, 0.001: 3.090, 0.0001: 3.719}  # standard normal upper quantiles


class Synthetic:
    """A callable returning a fresh iterator over the same batches {model: {unit_set: [tokens, units]}}
    (module docstring); `seconds` sums the time spent generating them."""

    def __init__(self, *, models: int, sets: tuple, tokens: int, batch: int, seed: int = 0,
                 token_seed: int | None = None):
        self.tokens, self.batch, self.seconds = tokens, batch, 0.0
        self.token_seed = seed if token_seed is None else token_seed  # the tokens; `seed` draws the models
        g = torch.Generator().manual_seed(seed)
        width = sum(sets)
        self.shared = int(SHARED_FRACTION * width)
        self.models = {}
        for m in range(models):
            order = torch.randperm(width, generator=g)
            universal, sparse = order[:self.shared], order[self.shared:][:int(SPARSE_FRACTION * width)]
            scale = 0.3 + 0.9 * torch.rand(width, generator=g)  # the latent's weight in each unit
            weights = torch.randn(RANK, width, generator=g) * scale / RANK ** 0.5
            quantile = torch.tensor([Z_FIRING[FIRING[k % len(FIRING)]] for k in range(len(sparse))])
            self.models[f"m{m}"] = {
                "sets": sets, "weights": weights, "noise": torch.randn(POOL, width, generator=g),
                "universal": universal, "feature": torch.randperm(self.shared, generator=g),  # the feature each copies
                "noise_scale": (0.1 + 1.4 * torch.rand(self.shared, generator=g)).sqrt(),
                "sparse": sparse, "cut": quantile * (1 + weights[:, sparse].square().sum(0)).sqrt(),  # x ~ N(0, spread^2)
            }

    def __call__(self):
        for index, start in enumerate(range(0, self.tokens, self.batch)):
            began = time.perf_counter()
            batch = self._batch(index, min(self.batch, self.tokens - start))
            self.seconds += time.perf_counter() - began
            yield batch

    def _batch(self, index: int, n: int) -> dict:
        g = torch.Generator().manual_seed(self.token_seed * 1_000_003 + index + 1)
        latent = torch.randn(n, RANK, generator=g)
        features = torch.randn(n, self.shared, generator=g)
        batch = {}
        for name, model in self.models.items():
            noise = model["noise"][torch.randint(0, POOL, (n,), generator=g)]  # [n, width]
            x = torch.addmm(noise, latent, model["weights"])  # latent seen through the model's weights, plus noise
            u, s = model["universal"], model["sparse"]
            x[:, u] = features[:, model["feature"]] + model["noise_scale"] * noise[:, u]
            x[:, s] = torch.relu(x[:, s] - model["cut"])
            batch[name] = dict(zip((f"s{k}" for k in range(len(model["sets"]))), x.split(list(model["sets"]), dim=1)))
        return batch


@contextlib.contextmanager
def _timed(seconds: Counter):
    """Time the library's phases by wrapping them (restored on exit); `seconds["pairs"]`: the refine
    pass's candidate pairs."""
    targets = [(MomentAccumulator, "update", "stream"), (CandidateMoments, "update", "refine"),
               (TopCandidates, "add_state", "candidates")]
    originals = [getattr(owner, name) for owner, name, _ in targets]

    def wrap(function, phase):
        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[phase] += time.perf_counter() - began
                if isinstance(args[0], CandidateMoments):
                    seconds["pairs"] = len(args[0].pairs)
        return timed
    for (owner, name, phase), function in zip(targets, originals):
        setattr(owner, name, wrap(function, phase))
    try:
        yield
    finally:
        for (owner, name, _), function in zip(targets, originals):
            setattr(owner, name, function)


def _run(batches, source: Synthetic, **kwargs) -> tuple:
    """(Comparison, {phase: seconds}) of one compare_activations call; the time `source` spent
    generating batches (when `batches` is `source` itself) is not counted."""
    seconds = Counter({"stream": 0.0, "refine": 0.0, "candidates": 0.0})
    began, generating = time.perf_counter(), source.seconds
    with _timed(seconds):
        result = compare_activations(batches, **kwargs)
    seconds["total"] = time.perf_counter() - began - (source.seconds - generating)
    seconds["fixed"] = seconds["total"] - seconds["stream"] - seconds["refine"] - seconds["candidates"]
    return result, dict(seconds)


def agreement(exact, sketch) -> dict:
    """How far the sketch's tables are from exact mode's (module docstring)."""
    live = ~exact.units["dead"].to_numpy()
    barely = (sketch.units["barely_seen"] if "barely_seen" in sketch.units else exact.units["dead"]).to_numpy()
    rows, seen_rows = _pair_rows(exact, live), _pair_rows(exact, live & ~barely)
    changed = ((exact.pairs["partner_unit"].to_numpy() != sketch.pairs["partner_unit"].to_numpy())
               | (exact.pairs["partner_unit_set"].to_numpy() != sketch.pairs["partner_unit_set"].to_numpy()))
    x, y = exact.pairs[rows], sketch.pairs[rows]
    a, b = exact.units["universal"].to_numpy(), sketch.units["universal"].to_numpy()
    excess = np.abs(exact.units["excess_corr"].to_numpy() - sketch.units["excess_corr"].to_numpy())[live & ~barely]
    baseline = (sketch.units["mean_baseline"] - exact.units["mean_baseline"]).to_numpy()[live & ~barely]
    # the sketch's max_corr is exact over all tokens for the partner it found, so exact - sketch is what
    # a changed partner costs (0 when the partner is the same)
    regret = (exact.pairs["max_corr"].to_numpy() - sketch.pairs["max_corr"].to_numpy())[seen_rows]
    return {
        "partner_changed": float(changed[rows].mean()), "partner_changed_seen": float(changed[seen_rows].mean()),
        "partner_changed_barely_seen": float(changed[rows & ~seen_rows].mean()) if (rows & ~seen_rows).any() else 0.0,
        "partner_regret_mean": float(np.nanmean(regret)), "partner_regret_p99": float(np.nanquantile(regret, 0.99)),
        "partner_regret_above_0.01": float(np.mean(regret > 0.01)),
        "partner_regret_above_se": float(np.mean(regret > exact.moments.count_ ** -0.5)),
        "max_corr_max_abs_diff": float(np.nanmax(np.abs(x["max_corr"].to_numpy() - y["max_corr"].to_numpy()))),
        "excess_max_abs_diff": float(np.nanmax(excess)), "excess_mean_abs_diff": float(np.nanmean(excess)),
        "baseline_mean_diff": float(np.nanmean(baseline)), "baseline_max_abs_diff": float(np.nanmax(np.abs(baseline))),
        "exact_baseline_median": float(np.nanmedian(exact.units["mean_baseline"][live])),
        "universal_exact": int(a.sum()), "universal_sketch": int(b.sum()),
        "universal_symmetric_difference": int((a != b).sum()),
        "universal_difference_fraction": float((a != b).sum() / max(a.sum(), 1)),
        "universal_missed_barely_seen": int((a & ~b & barely).sum()),
        "barely_seen": int(barely.sum()), "live_units": int(live.sum()),
        "baseline_exact": int(sketch.units["baseline_exact"].sum()) if "baseline_exact" in sketch.units else 0,
    }


def _floors(exact, sketch, batches, source: Synthetic, common: dict, *, regenerate: bool, seed: int
            ) -> tuple[dict, dict]:
    """Exact mode against itself: with other rotations (seed + 1), the rule's own noise at the threshold; on
    other tokens of the same models (token seed + 1), the partners' own noise (module docstring)."""
    other, _ = _run(batches, source, seed=seed + 1, **common)
    noise = {key: value for key, value in agreement(exact, other).items()
             if key.startswith(("universal", "baseline", "excess"))}
    fresh = Synthetic(models=len(source.models), sets=next(iter(source.models.values()))["sets"],
                      tokens=source.tokens, batch=source.batch, seed=seed, token_seed=seed + 1)
    fresh_batches = fresh if regenerate else [b for b, _ in zip(itertools.cycle(list(fresh())), range(len(batches)))]
    resampled, _ = _run(fresh_batches, fresh, seed=seed, **common)
    token_noise = {key: value for key, value in agreement(exact, resampled).items()
                   if key.startswith(("partner_changed", "universal"))}
    token_noise["sketch_partner_changed_where_stable"] = _changed_where_stable(exact, resampled, sketch)
    return noise, token_noise


def _changed_where_stable(exact, resampled, sketch) -> float:
    """The share of `pairs` rows of live units whose partner the sketch changes, among those whose partner
    is the same in exact mode on two independent token streams: the partners that are a property of the
    models rather than of the tokens sampled."""
    def partner(c):
        return c.pairs["partner_unit_set"].astype(str).to_numpy() + "/" + c.pairs["partner_unit"].astype(str).to_numpy()
    live = _pair_rows(exact, ~exact.units["dead"].to_numpy())
    stable = live & (partner(exact) == partner(resampled))
    return float((partner(sketch) != partner(exact))[stable].mean())


def _pair_rows(comparison, keep: np.ndarray) -> np.ndarray:
    """Bool per `pairs` row: its unit is kept by `keep`, bool per `units` row (the pairs rows are, per
    model, its units in order for each other model in turn)."""
    parts, start = [], 0
    for model in comparison.models:
        size = int((comparison.units["model"] == model).sum())
        parts.extend([keep[start:start + size]] * (len(comparison.models) - 1))
        start += size
    return np.concatenate(parts)


def measure(*, models: int = 4, sets: tuple = (1024, 2048, 3072, 2048), tokens: int = 16384, batch: int = 1024,
            subsample: float = 0.02, candidates: int = 8, repeats: int = 3, threads: int = 1,
            dtype: str = "float32", rotation: str = "fast", distinct: int | None = None, regenerate: bool = False,
            floors: bool = True, more_candidates: tuple = (), seed: int = 0, log=print) -> dict:
    """Run exact and sketch `repeats` times each, alternated, on one synthetic stream; the dict of
    agreement, times and the projection (module docstring). `distinct`: hold only that many batches
    and cycle them to make the stream (for timing long streams in little memory; the agreement
    figures are then those of a stream that repeats itself). `floors=False` skips the two extra exact
    runs (other rotations, other tokens). `more_candidates`: after them, the sketch once with each of
    these candidate counts, against the same exact run (`by_candidates`)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    held = tokens if distinct is None else distinct * batch
    source = Synthetic(models=models, sets=sets, tokens=held, batch=batch, seed=seed)
    if regenerate:  # generated afresh on every pass (and its time taken out): streams larger than memory
        batches = source
    else:  # held in memory: the runs time the comparison, not the source
        pool = list(source())
        batches = [pool[k % len(pool)] for k in range(-(-tokens // batch))]
    common = dict(dtype=dtype, rotation=rotation)
    times = {"exact": [], "sketch": []}
    for repeat in range(repeats):
        exact, phases = _run(batches, source, seed=seed, **common)
        times["exact"].append(phases)
        log(f"exact  run {repeat + 1}/{repeats}: " + _show(phases))
        sketch, phases = _run(batches, source, mode="sketch", subsample=subsample, candidates=candidates, seed=seed,
                              **common)
        times["sketch"].append(phases)
        log(f"sketch run {repeat + 1}/{repeats}: " + _show(phases))
    noise, token_noise = _floors(exact, sketch, batches, source, common, regenerate=regenerate, seed=seed) \
        if floors else ({}, {})
    median = {mode: {phase: statistics.median(run.get(phase, 0.0) for run in runs) for phase in runs[0]}
              for mode, runs in times.items()}
    by_candidates = {}
    for count in more_candidates:
        other, phases = _run(batches, source, mode="sketch", subsample=subsample, candidates=count, seed=seed, **common)
        log(f"sketch, {count} candidates: " + _show(phases))
        by_candidates[count] = {**agreement(exact, other), "seconds_sketch": phases["total"], "phases_sketch": phases,
                                "speedup": median["exact"]["total"] / phases["total"]}
    pairs = int(median["sketch"].pop("pairs"))
    per_token = {mode: (m["stream"] + m["refine"]) / tokens for mode, m in median.items()}
    fixed = {mode: m["candidates"] + m["fixed"] for mode, m in median.items()}
    asymptotic = per_token["exact"] / per_token["sketch"]
    needed = ((20 * fixed["sketch"] - fixed["exact"]) / (per_token["exact"] - 20 * per_token["sketch"])
              if asymptotic > 20 else None)
    return {
        "models": models, "sets": list(sets), "units_per_model": sum(sets), "tokens": tokens, "batch": batch,
        "distinct_tokens": held, "subsample": subsample, "subsample_tokens": int(sketch.moments.count_),
        "candidates": candidates,
        "candidate_pairs": pairs, "threads": threads, "dtype": dtype, "rotation": rotation,
        **agreement(exact, sketch), "exact_other_rotations": noise, "exact_other_tokens": token_noise,
        "seconds_exact": median["exact"]["total"], "seconds_sketch": median["sketch"]["total"],
        "speedup": median["exact"]["total"] / median["sketch"]["total"],
        "phases_exact": median["exact"], "phases_sketch": median["sketch"],
        "ms_per_token_exact": 1e3 * per_token["exact"], "ms_per_token_sketch": 1e3 * per_token["sketch"],
        "ms_per_token_source": 1e3 * source.seconds / held, "by_candidates": by_candidates,
        "projected": {"speedup_at_10x_tokens": _speedup(10 * tokens, per_token, fixed),
                      "speedup_asymptotic": asymptotic, "tokens_for_20x": needed,
                      "speedup_asymptotic_with_source": (per_token["exact"] + source.seconds / held)
                      / (per_token["sketch"] + 2 * source.seconds / held)},
    }


def measure_sketch_only(*, exact_ms_per_token: float, exact_fixed_s: float, models: int = 4,
                        sets: tuple = (1024, 2048, 3072, 2048), tokens: int, batch: int = 1024, subsample: float,
                        candidates: int = 8, threads: int = 2, dtype: str = "float32", rotation: str = "fast",
                        seed: int = 0) -> dict:
    """The sketch alone on a stream too long for an exact run here (generated afresh each pass, its time taken
    out), against exact mode's time projected from its per-token and fixed costs measured by `measure` at this
    width: exact mode's stream is one GEMM per batch at a constant rate, so its time is linear in tokens.
    No agreement figures: they need the exact run."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    source = Synthetic(models=models, sets=sets, tokens=tokens, batch=batch, seed=seed)
    sketch, phases = _run(source, source, mode="sketch", subsample=subsample, candidates=candidates, seed=seed,
                          dtype=dtype, rotation=rotation)
    projected = exact_ms_per_token * tokens / 1e3 + exact_fixed_s
    return {"models": models, "sets": list(sets), "tokens": tokens, "subsample": subsample,
            "subsample_tokens": int(sketch.moments.count_), "candidates": candidates, "threads": threads,
            "phases_sketch": phases, "seconds_sketch": phases["total"],
            "baseline_exact": int(sketch.units["baseline_exact"].sum()),
            "barely_seen": int(sketch.units["barely_seen"].sum()),
            "universal_sketch": int(sketch.units["universal"].sum()),
            "seconds_exact_projected": projected, "speedup_projected": projected / phases["total"]}


def _speedup(tokens: int, per_token: dict, fixed: dict) -> float:
    return (per_token["exact"] * tokens + fixed["exact"]) / (per_token["sketch"] * tokens + fixed["sketch"])


def _show(phases: dict) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--units", default="1024,2048,3072,2048", help="unit set sizes of each model")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--subsample", type=float, default=0.02)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rotation", default="fast")
    parser.add_argument("--distinct", type=int, default=None, help="batches held; the stream cycles them")
    parser.add_argument("--regenerate", action="store_true", help="generate the batches on every pass, hold none")
    parser.add_argument("--no-floors", action="store_true", help="skip exact mode's runs against itself")
    parser.add_argument("--more-candidates", default="", help="e.g. 32: the sketch once more per count, same exact run")
    parser.add_argument("--sketch-only", default=None, metavar="MS_PER_TOKEN,FIXED_S",
                        help="run the sketch alone, against exact mode's per-token and fixed cost measured before")
    args = parser.parse_args()
    sets = tuple(int(n) for n in args.units.split(","))
    if args.sketch_only:
        per_token, fixed = (float(v) for v in args.sketch_only.split(","))
        print(json.dumps(measure_sketch_only(exact_ms_per_token=per_token, exact_fixed_s=fixed, models=args.models,
                                             sets=sets, tokens=args.tokens, batch=args.batch, subsample=args.subsample,
                                             candidates=args.candidates, threads=args.threads, dtype=args.dtype,
                                             rotation=args.rotation)))
        return
    result = measure(models=args.models, sets=sets, tokens=args.tokens,
                     batch=args.batch, subsample=args.subsample, candidates=args.candidates, repeats=args.repeats,
                     threads=args.threads, dtype=args.dtype, rotation=args.rotation,
                     distinct=args.distinct, regenerate=args.regenerate, floors=not args.no_floors,
                     more_candidates=tuple(int(n) for n in args.more_candidates.split(",") if n),
                     log=lambda s: print(s, flush=True))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
