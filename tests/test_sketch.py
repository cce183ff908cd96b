"""Sketch and refine (issue 9 part 2): on planted universality the sketch finds exact mode's best
partners and universal set, its max correlations are exact over all tokens, sparse units the
subsample misses are flagged, and bad settings are refused in one line; each test is named for
the invariant it checks."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from universality import UniversalityError
from universality.compare import compare_activations
from universality.compare._sketch import subsample_rows
from universality.moments import budget_for_passes

MODELS, SETS, TOKENS, BATCH = ("a", "b", "c"), (40, 60), 60_000, 2_000
SHARED = 12  # planted universal features: 12 units of s0 in every model, at model-specific positions


def _activations(seed=0):
    """Per model: a rank-6 shared latent seen through model-specific weights, plus unit noise; 12
    units of s0 copy shared features (noisy, in a model-specific order); unit 0 of s1 is a ReLU of
    one more shared feature that fires on about 1 token in 20000 (universal, but the subsample misses
    it), unit 1 of s1 a ReLU of its own that fires on 5% of tokens."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(TOKENS, 6, generator=g, dtype=torch.float64)
    features = torch.randn(TOKENS, SHARED, generator=g, dtype=torch.float64)
    rare = torch.randn(TOKENS, generator=g, dtype=torch.float64)
    acts = {}
    for m in MODELS:
        sets = {f"s{k}": latent @ torch.randn(6, n, generator=g, dtype=torch.float64)
                + 2 * torch.randn(TOKENS, n, generator=g, dtype=torch.float64) for k, n in enumerate(SETS)}
        where = torch.randperm(SETS[0], generator=g)[:SHARED]
        sets["s0"][:, where] = features + 0.5 * torch.randn(TOKENS, SHARED, generator=g, dtype=torch.float64)
        sets["s1"][:, 0] = torch.relu(rare - 3.9) * 10  # P(rare > 3.9) = 4.8e-5
        sets["s1"][:, 1] = torch.relu(sets["s1"][:, 1] - 1.65 * sets["s1"][:, 1].std())
        acts[m] = sets
    return acts


def _batches(acts):
    return [{m: {s: x[i:i + BATCH] for s, x in sets.items()} for m, sets in acts.items()}
            for i in range(0, TOKENS, BATCH)]


@pytest.fixture(scope="module")
def runs():
    torch.set_num_threads(2)
    acts = _activations()
    batches = _batches(acts)
    exact = compare_activations(batches)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every barely seen unit gets its full rows: nothing to warn of
        sketch = compare_activations(batches, mode="sketch", subsample=0.05, candidates=4)
    return acts, batches, exact, sketch


def test_sketch_finds_exact_best_partners_and_universal_set_on_planted_universality(runs):
    _, _, exact, sketch = runs
    assert (sketch.units["universal"] == exact.units["universal"]).all()
    assert sketch.units["universal"].sum() >= SHARED * len(MODELS)
    x, y = exact.pairs, sketch.pairs
    assert (x["partner_unit"].to_numpy() == y["partner_unit"].to_numpy()).all()
    assert (x["partner_unit_set"].to_numpy() == y["partner_unit_set"].to_numpy()).all()
    np.testing.assert_allclose(y["max_corr"], x["max_corr"], atol=1e-6, rtol=0)
    assert list(sketch.units.columns) == list(exact.units.columns) + ["barely_seen", "baseline_exact"]
    assert list(sketch.pairs.columns) == list(exact.pairs.columns)


def test_reported_max_corr_is_the_exact_correlation_over_all_tokens_in_float64(runs):
    acts, _, _, sketch = runs
    whole = {m: torch.cat(list(sets.values()), dim=1) for m, sets in acts.items()}
    starts = dict(zip((f"s{k}" for k in range(len(SETS))), np.cumsum((0,) + SETS[:-1])))
    for (a, b), rows in sketch.pairs.groupby(["model", "other_model"]):
        position = np.flatnonzero(rows["partner_unit"].to_numpy() >= 0)  # rows are a's units in order
        found = rows.iloc[position]
        j = torch.as_tensor([starts[s] + u for s, u in zip(found["partner_unit_set"], found["partner_unit"])])
        x = whole[a][:, position] - whole[a][:, position].mean(0)
        y = whole[b][:, j] - whole[b][:, j].mean(0)
        reference = (x * y).sum(0) / (x.norm(dim=0) * y.norm(dim=0))
        np.testing.assert_allclose(found["max_corr"].to_numpy(), reference.numpy(), atol=1e-6, rtol=0)


def test_sparse_units_the_subsample_misses_are_flagged_and_get_exact_modes_partner_max_and_baseline(runs):
    """The universal ReLU firing on 1 token in 20000 never moves in the subsample: it is flagged barely seen,
    and its full rows over the tokens off its floor give exact mode's partner, max and universal flag."""
    _, _, exact, sketch = runs
    units = sketch.units
    flagged = units[units["barely_seen"]]
    assert set(zip(flagged["model"], flagged["unit_set"], flagged["unit"])) == {(m, "s1", 0) for m in MODELS}
    assert not flagged["dead"].any() and flagged["baseline_exact"].all()
    want = exact.units.loc[flagged.index]
    assert want["universal"].all() and flagged["universal"].all()
    np.testing.assert_allclose(flagged["mean_max_corr"], want["mean_max_corr"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(flagged["excess_corr"], want["excess_corr"], atol=0.01, rtol=0)


def test_the_subsample_is_seeded_per_batch_and_a_fraction_of_every_batch():
    rows = subsample_rows(0.05, seed=3, index=7, tokens=2000)
    assert torch.equal(rows, subsample_rows(0.05, seed=3, index=7, tokens=2000))
    assert not torch.equal(rows, subsample_rows(0.05, seed=3, index=8, tokens=2000))
    assert len(rows) in (100, 101) and torch.equal(rows, rows.sort().values)
    counts = [len(subsample_rows(0.013, seed=0, index=k, tokens=100)) for k in range(2000)]
    assert math.isclose(np.mean(counts), 1.3, abs_tol=0.1)  # floor(f n + u): f n on average


def test_sketch_is_reproducible_and_the_same_under_a_multi_pass_subsample_plan(runs):
    _, batches, _, sketch = runs
    budget = budget_for_passes({m: dict(zip(("s0", "s1"), SETS)) for m in MODELS}, 3, dtype="float64",
                               batch_tokens=BATCH)
    again = compare_activations(lambda: iter(batches), mode="sketch", subsample=0.05, candidates=4,
                                memory_budget=budget)
    assert len(again.plan.passes) > 1
    pd.testing.assert_frame_equal(again.units, sketch.units, check_exact=False, atol=1e-9, rtol=0)
    pd.testing.assert_frame_equal(again.pairs, sketch.pairs, check_exact=False, atol=1e-9, rtol=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "sketch", "candidates": 101},
     "candidates=101 is more than the 100 units of model 'a'; choose candidates <= 100"),
    ({"mode": "sketch", "candidates": 0}, "candidates must be an integer >= 1"),
    ({"mode": "sketch", "candidates": 2.5}, "candidates must be an integer >= 1"),
    ({"mode": "sketch", "subsample": 0}, "subsample must be the fraction of tokens"),
    ({"mode": "sketch", "subsample": 1.5}, "subsample must be the fraction of tokens"),
    ({"mode": "sketch", "subsample": float("nan")}, "subsample must be the fraction of tokens"),
    ({"mode": "sketch", "subsample": True}, "subsample must be the fraction of tokens"),
    ({"mode": "sketch", "subsample": "5%"}, "subsample must be the fraction of tokens"),
    ({"mode": "fast"}, "mode must be 'exact' or 'sketch'"),
    ({"mode": "sketch", "backend": "ray"}, "mode='sketch' runs on the local backend only"),
    ({"subsample": 0.1}, "apply to mode='sketch' only"),
])
def test_bad_sketch_settings_are_refused_in_one_line(kwargs, message):
    batch = {m: {"s0": torch.randn(50, 40), "s1": torch.randn(50, 60)} for m in MODELS}
    with pytest.raises(UniversalityError, match=message) as error:
        compare_activations([batch], **kwargs)
    assert "\n" not in str(error.value)


def test_sketch_refuses_a_one_shot_iterator_and_a_subsample_too_small_to_correlate():
    batch = {m: torch.randn(50, 4) for m in MODELS}
    with pytest.raises(UniversalityError, match="one-shot iterator"):
        compare_activations(iter([batch, batch]), mode="sketch")
    with pytest.raises(UniversalityError, match=r"pass 1 \(subsample=0\.001\): need at least 2 tokens"):
        compare_activations([batch], mode="sketch", subsample=0.001, candidates=2)


def test_denoised_baseline_is_unbiased_where_the_subsample_baseline_is_biased_high():
    """A weak rank-64 latent shared by unit sets of 512, 400 subsample tokens of 40000: the
    subsample's own rotation baseline (an exact run over just its rows, same rotations) sits well
    above the baseline over all tokens; the sketch's, with the sampling noise taken out, matches it on
    average. (Under a strong low-rank latent the rotated correlations spread so widely that the
    noise barely moves their max, and both agree: benchmarks/bench_sketch.py.)"""
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(3)
    tokens, width, batch, fraction = 40_000, 512, 4_000, 0.01
    latent = torch.randn(tokens, 64, generator=g)
    acts = {m: {"s": latent @ (0.05 * torch.randn(64, width, generator=g)) + torch.randn(tokens, width, generator=g)}
            for m in ("a", "b")}
    batches = [{m: {"s": x["s"][i:i + batch]} for m, x in acts.items()} for i in range(0, tokens, batch)]
    exact = compare_activations(batches, seed=5)
    sketch = compare_activations(batches, mode="sketch", subsample=fraction, candidates=4, seed=5)
    rows = torch.cat([subsample_rows(fraction, 5, k, batch) + k * batch for k in range(len(batches))])
    short = compare_activations([{m: {"s": x["s"][rows]} for m, x in acts.items()}], seed=5)
    assert sketch.moments.count_ == len(rows)
    truth = exact.units["mean_baseline"].to_numpy()
    raw_bias = float(np.mean(short.units["mean_baseline"].to_numpy() - truth))
    bias = float(np.mean(sketch.units["mean_baseline"].to_numpy() - truth))
    assert raw_bias > 0.05  # the bias the correction is for
    assert abs(bias) < 0.01


def test_a_run_in_sketch_mode_with_the_whole_stream_as_subsample_gives_the_exact_tables_and_is_not_streamed_again(
        tmp_path, monkeypatch):
    """subsample = 1: pass 1 is the exact comparison, so its top candidate is the exact partner and the
    denoised baseline is the exact one; a finished sketch run is not streamed again, unless the sketch's
    fixed rules (`sketch_rules`) changed."""
    import tomllib
    from universality.api import run_experiment
    from universality.config import parse_config
    from test_pipeline import SMALL
    exact_text = SMALL.replace("[train]\n", "[train]\nthreads = 1\n") + '\n[scale]\nmemory_budget = "none"\n'
    sketch_text = exact_text.replace('name = "small"', 'name = "sketched"') + 'mode = "sketch"\nsubsample = 1.0\n'
    exact = run_experiment(parse_config(tomllib.loads(exact_text)), runs_dir=tmp_path)
    with warnings.catch_warnings():  # a few sparse units of the tiny models are barely seen: expected
        warnings.simplefilter("ignore", UserWarning)
        sketch = run_experiment(parse_config(tomllib.loads(sketch_text)), runs_dir=tmp_path)
    assert "barely_seen" in sketch.comparison.units
    for name in ("units", "pairs"):
        got = pd.read_parquet(sketch.run_dir / "tables" / f"{name}.parquet").drop(columns=["barely_seen", "baseline_exact"],
                                                                                  errors="ignore")
        want = pd.read_parquet(exact.run_dir / "tables" / f"{name}.parquet")[got.columns]  # no calibration in a sketch
        # the exact run accumulates in float32 (about 1e-6 from float64), the refine pass in float64
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=0, atol=1e-5)
    seen = []
    run_experiment(parse_config(tomllib.loads(sketch_text)), runs_dir=tmp_path,
                   on_progress=lambda task, done, total: seen.append(task))
    assert not [task for task in seen if task.startswith("stream activations (sketch, stream")], seen
    from universality.compare import _sketch_baselines
    monkeypatch.setattr(_sketch_baselines, "MARGIN_SCALE", 3.0)  # another band around the threshold
    seen.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        run_experiment(parse_config(tomllib.loads(sketch_text)), runs_dir=tmp_path,
                       on_progress=lambda task, done, total: seen.append(task))
    assert [task for task in seen if task.startswith("stream activations (sketch, stream")], seen  # other rules


@pytest.mark.parametrize("extra, message", [
    ('subsample = 0.1\n', 'subsample and candidates are used only with mode = "sketch"'),
    ('mode = "sketch"\nbackend = "ray"\n', 'mode = "sketch" runs on backend = "local" only'),
    ('mode = "sketch"\nsubsample = 0\n', "subsample"),
])
def test_bad_sketch_settings_in_a_config_are_one_line(extra, message):
    import tomllib
    from universality.config import parse_config
    from test_pipeline import SMALL
    with pytest.raises(UniversalityError) as error:
        parse_config(tomllib.loads(SMALL + "\n[scale]\n" + extra))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_row_baselines_over_the_whole_stream_equal_exact_modes_baselines_with_the_same_rotations():
    """`exact_row_baselines` from every unit's full rows, with the subsample being the whole stream
    (so the rotated variances are exact too), gives exact mode's baseline per rotation: the same
    rotations (shared by key) applied to the same moments, float64 here against float32 there."""
    from universality.compare._maxima import baseline_scales
    from universality.compare._refine import CandidateMoments
    from universality.compare._sketch_baselines import exact_row_baselines
    from universality.moments import MomentAccumulator
    torch.set_num_threads(2)
    acts, sizes = _activations(), {m: sum(SETS) for m in MODELS}
    batches = _batches(acts)[:5]
    exact = compare_activations(batches, rotations=2, seed=7, rotation="fast")
    acc = MomentAccumulator({m: dict(zip(("s0", "s1"), SETS)) for m in MODELS}, dtype="float64")
    refine = CandidateMoments(acc.layout, torch.tensor([[0, 100]]), torch.full((300,), 0.5, dtype=torch.float64),
                              rows=torch.arange(300))
    for batch in batches:
        acc.update(batch)
        refine.update(batch)
    found = exact_row_baselines(refine, acc.gram_, baseline_scales(acc, rotations=2, seed=7, kind="fast"))
    assert set(found) == {(a, b) for a in MODELS for b in MODELS if a != b}
    for (a, b), (units, values) in found.items():
        assert units.tolist() == list(range(sizes[a]))
        rows = exact.pairs[(exact.pairs["model"] == a) & (exact.pairs["other_model"] == b)]
        for r in range(2):
            got = np.where(np.isneginf(values[r].numpy()), np.nan, values[r].numpy())  # -inf: a dead unit
            np.testing.assert_allclose(got, rows[f"baseline_max_corr_r{r}"].to_numpy(), atol=2e-5, rtol=0)


@pytest.mark.parametrize("sparse", [False, True])
def test_row_comoments_folded_from_float32_partial_sums_equal_float64_centred_products(monkeypatch, sparse):
    """The full rows sum each batch's products in float32 and fold them, with the rank-one mean corrections,
    into float64 every `_ROW_FOLD_TOKENS` tokens (here 3000: 4 folds over 10000 tokens, one mid-batch count):
    equal to the centred co-moments computed in float64, to float32 rounding; own-model entries 0. With
    atoms, some rows run as sparse products over the tokens off their atom: two ReLUs at their floor 0 (one
    firing on 5% of tokens, one on none of these), and a dense unit at an arbitrary value (exact all the same);
    `_FOLD_ROWS` = 2 folds the sparse and dense partial sums in several slices."""
    from universality.compare import _refine
    monkeypatch.setattr(_refine, "_ROW_FOLD_TOKENS", 3000)
    monkeypatch.setattr(_refine, "_FOLD_ROWS", 2)
    torch.set_num_threads(1)
    acts = _activations()
    batches = _batches(acts)[:5]
    layout = {m: dict(zip(("s0", "s1"), SETS)) for m in MODELS}
    rows = torch.tensor([0, 7, 40, 141, 150, 299])  # 40: a's rare ReLU, 141: b's 5% ReLU
    nan = float("nan")
    atoms = torch.tensor([nan, 0.3, 0.0, 0.0, nan, nan], dtype=torch.float64) if sparse else None
    refine = _refine.CandidateMoments(layout, torch.tensor([[0, 100]]), torch.full((300,), 0.5, dtype=torch.float64),
                                      rows=rows, atoms=atoms)
    for batch in batches:
        refine.update(batch)
    x = torch.cat([torch.cat([acts[m][s][:5 * BATCH] for s in ("s0", "s1")], dim=1) for m in MODELS], dim=1)
    x = (x - x.mean(dim=0)) * 0.5  # [tokens, units], scaled as the refine pass scales
    want = x[:, rows].T @ x  # [rows, units]
    for r, unit in enumerate(rows.tolist()):
        own = slice(unit // sum(SETS) * sum(SETS), (unit // sum(SETS) + 1) * sum(SETS))
        want[r, own] = 0
    got = refine.end_stream().row_comoment_
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("column_block", [7, 64, 4096])
def test_candidate_co_moments_in_column_blocks_equal_float64_centred_products(monkeypatch, column_block):
    """The sampled products run one column block of units at a time (`_COLUMN_BLOCK`; 7 and 64 cut the 300
    units into 43 and 5 blocks, some holding no pair) and come back in the order of `pairs`."""
    from universality.compare import _refine
    monkeypatch.setattr(_refine, "_COLUMN_BLOCK", column_block)
    torch.set_num_threads(1)
    acts = _activations()
    batches = _batches(acts)[:3]
    layout = {m: dict(zip(("s0", "s1"), SETS)) for m in MODELS}
    g = torch.Generator().manual_seed(5)
    i, j = torch.randint(0, 150, (400,), generator=g), torch.randint(150, 300, (400,), generator=g)
    keys = torch.unique(i * 300 + j)
    pairs = torch.stack([keys // 300, keys % 300], dim=1)  # sorted by row then column, across every block
    refine = _refine.CandidateMoments(layout, pairs, torch.full((300,), 0.5, dtype=torch.float64))
    for batch in batches:
        refine.update(batch)
    x = torch.cat([torch.cat([acts[m][s][:3 * BATCH] for s in ("s0", "s1")], dim=1) for m in MODELS], dim=1)
    want = torch.corrcoef(x.double().T)[pairs[:, 0], pairs[:, 1]]
    assert torch.allclose(refine.correlation(), want, rtol=0, atol=1e-6, equal_nan=True)  # NaN: a unit dead here


def test_refine_checks_deferred_as_off_cpu_name_the_first_bad_batch_and_change_nothing_else():
    """`check_every` (the default off CPU): the batches' checks stay on the device and are read every k
    batches and at `end_stream`; a clean stream gives the same moments as checks read at once, and a bad
    batch is named, by kind, once read."""
    from universality.compare._refine import CandidateMoments
    torch.set_num_threads(1)
    acts = _activations()
    batches = _batches(acts)[:4]
    layout = {m: dict(zip(("s0", "s1"), SETS)) for m in MODELS}
    pairs, scale = torch.tensor([[0, 100], [3, 250], [120, 299]]), torch.ones(300, dtype=torch.float64)
    at_once, deferred = (CandidateMoments(layout, pairs, scale, check_every=k) for k in (None, 3))
    for batch in batches:
        at_once.update(batch)
        deferred.update(batch)
    assert torch.equal(at_once.end_stream().comoment_, deferred.end_stream().comoment_)
    for bad, message in ((float("nan"), "model 'b', unit set 's1' has NaN or inf activations"),
                         (1e30, "model 'b', unit set 's1' has activations beyond float32 range")):
        refine = CandidateMoments(layout, pairs, scale, check_every=3)
        poisoned = {m: {s: x.clone() for s, x in sets.items()} for m, sets in batches[1].items()}
        poisoned["b"]["s1"][5, 7] = bad
        refine.update(batches[0]).update(poisoned)  # not read yet: 2 of 3 batches
        with pytest.raises(UniversalityError, match=f"^{message}.* in batch 1 of this state.*then stream again$"):
            refine.update(batches[2])
        with pytest.raises(UniversalityError, match="in batch 1 of this state"):  # and stays failed
            refine.end_stream()
    with pytest.raises(UniversalityError, match="^check_every must be a positive int or None, got 0$"):
        CandidateMoments(layout, pairs, scale, check_every=0)


def test_units_near_the_threshold_get_exact_baselines_and_exact_modes_universal_flags():
    """Narrow sets (3 models x 96 units, a rank-8 latent) with 24 units copying shared features at
    correlations spread across the threshold, 800 subsample tokens of 40000: every unit whose exact
    excess is within 0.05 of 0.5 is marked baseline_exact, those units' baselines are exact mode's up to
    the rotated variances' subsample correlations (relative error about 1 / sqrt(800): here up to 0.0054,
    bound 0.01, mean bound 0.003), and the universal flags agree with exact mode's except within that
    distance of the threshold."""
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(11)
    tokens, width, shared = 40_000, 96, 24
    latent = torch.randn(tokens, 8, generator=g)
    features = torch.randn(tokens, shared, generator=g)
    noise = torch.linspace(0.3, 1.6, shared)  # partner correlations from about 0.9 down to about 0.3
    acts = {}
    for m in MODELS:
        x = latent @ (0.4 * torch.randn(8, width, generator=g)) + torch.randn(tokens, width, generator=g)
        x[:, torch.randperm(width, generator=g)[:shared]] = features + noise * torch.randn(tokens, shared, generator=g)
        acts[m] = {"s": x}
    batches = [{m: {"s": x["s"][i:i + 4000]} for m, x in acts.items()} for i in range(0, tokens, 4000)]
    exact = compare_activations(batches, seed=3)
    sketch = compare_activations(batches, mode="sketch", subsample=0.02, candidates=4, seed=3)
    excess = exact.units["excess_corr"].to_numpy()
    marked = sketch.units["baseline_exact"].to_numpy()
    assert marked[np.abs(excess - 0.5) < 0.05].all() and 0 < marked.sum() < len(marked) / 2
    gap = np.abs(sketch.units["mean_baseline"].to_numpy() - exact.units["mean_baseline"].to_numpy())[marked]
    assert gap.max() < 0.01 and gap.mean() < 0.003
    differ = sketch.units["universal"].to_numpy() != exact.units["universal"].to_numpy()
    assert (np.abs(excess[differ] - 0.5) < 0.01).all()
    assert exact.units["universal"].sum() > 10


def test_units_with_full_rows_take_exact_modes_partner_where_the_subsample_ranks_near_twins_wrongly():
    """16 units of model a copy a feature that b and c each hold twice, in near twins (noise 0.75 and 0.80):
    800 subsample tokens cannot rank the twins, so with one candidate the subsample picks the wrong twin
    for some (12 of the near-threshold pairs rows here, measured with the candidates' max alone), while
    the full rows the near-threshold units get in pass 2 give exact mode's partner and max correlation."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(5)
    tokens, width, k = 40_000, 64, 16
    feature = torch.randn(tokens, k, generator=g)
    acts = {}
    for m in MODELS:
        x = torch.randn(tokens, width, generator=g)
        x[:, :k] = feature + 0.75 * torch.randn(tokens, k, generator=g)
        if m != "a":
            x[:, k:2 * k] = feature + 0.80 * torch.randn(tokens, k, generator=g)
        acts[m] = {"s": x}
    batches = [{m: {"s": x["s"][i:i + 4000]} for m, x in acts.items()} for i in range(0, tokens, 4000)]
    exact = compare_activations(batches, seed=3)
    sketch = compare_activations(batches, mode="sketch", subsample=0.02, candidates=1, seed=3)
    keys = ["model", "unit_set", "unit"]
    on_rows = sketch.pairs[keys].merge(sketch.units[keys + ["baseline_exact"]], on=keys)["baseline_exact"].to_numpy()
    copies = ((sketch.pairs["model"] == "a") & (sketch.pairs["unit"] < k)).to_numpy()
    assert on_rows[copies].sum() >= 16  # of the copies' 32 pairs rows; the rest lie outside the band
    for column in ("partner_unit_set", "partner_unit"):
        assert (sketch.pairs[column].to_numpy()[on_rows] == exact.pairs[column].to_numpy()[on_rows]).all()
    np.testing.assert_allclose(sketch.pairs["max_corr"].to_numpy()[on_rows],
                               exact.pairs["max_corr"].to_numpy()[on_rows], atol=1e-5, rtol=0)


def test_full_rows_beyond_the_memory_budget_are_left_to_the_denoised_baseline_with_a_warning():
    """Near-threshold units under a memory budget that holds, beside pass 1's resident memory, the full
    rows of a few units (beside the largest block, which pass 1 needs): those closest to the threshold
    get exact baselines, the rest keep the denoised one, and a warning counts them."""
    from universality.compare._sketch import _ROW_BYTES
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(11)
    tokens, width, shared = 20_000, 96, 24
    features = torch.randn(tokens, shared, generator=g)
    noise = torch.linspace(0.3, 1.6, shared)
    acts = {}
    for m in MODELS:
        x = torch.randn(tokens, width, generator=g)
        x[:, torch.randperm(width, generator=g)[:shared]] = features + noise * torch.randn(tokens, shared, generator=g)
        acts[m] = {"s": x}
    batches = [{m: {"s": x["s"][i:i + 4000]} for m, x in acts.items()} for i in range(0, tokens, 4000)]
    free = compare_activations(batches, mode="sketch", subsample=0.04, candidates=4, seed=3)
    row = _ROW_BYTES * 3 * width
    budget = sum(free.plan.resident.values()) + 8 * width * width + 5 * row  # a float64 block, 5 rows more
    with pytest.warns(UserWarning, match=r"^\d+ units within 0\.\d+ of the threshold keep the subsample's denoised"):
        capped = compare_activations(batches, mode="sketch", subsample=0.04, candidates=4, seed=3,
                                     memory_budget=budget)
    assert capped.units["baseline_exact"].sum() == (8 * width * width) // row + 5 < free.units["baseline_exact"].sum()
    assert capped.units["baseline_exact"].to_numpy()[~free.units["baseline_exact"].to_numpy()].sum() == 0


def test_barely_seen_units_beyond_the_memory_budget_keep_their_flag_and_a_warning_counts_them(runs, monkeypatch):
    """Full rows go to the least seen units first; under a budget holding one row (full rows priced here so
    that one fits beside pass 1's resident memory), one of the three barely seen ReLUs gets it and exact mode's
    partner, and a warning counts the other two."""
    from universality.compare import _sketch
    _, batches, exact, _ = runs
    budget = 2 * sum(compare_activations(batches, mode="sketch", subsample=0.05, candidates=4).plan.resident.values())
    planned = compare_activations(batches, mode="sketch", subsample=0.05, candidates=4, memory_budget=budget)
    spare = budget - sum(planned.plan.resident.values())
    monkeypatch.setattr(_sketch, "_ROW_BYTES", int(spare / (1.5 * len(planned.units))))  # one row fits, not two
    with pytest.warns(UserWarning, match=r"^2 of 300 live units moved on fewer than 32 of the 3\d\d\d subsample tokens "
                                         r"and their full rows do not fit the memory budget"):
        capped = compare_activations(batches, mode="sketch", subsample=0.05, candidates=4, memory_budget=budget)
    flagged = capped.units[capped.units["barely_seen"]]
    assert len(flagged) == 3 and flagged["baseline_exact"].sum() == 1 == capped.units["baseline_exact"].sum()
    key = ["model", "unit_set", "unit"]
    settled = flagged.loc[flagged["baseline_exact"], key]
    got, want = (c.pairs.merge(settled, on=key) for c in (capped, exact))  # its pairs rows, one per other model
    assert len(got) == len(MODELS) - 1
    for column in ("other_model", "partner_unit_set", "partner_unit"):
        np.testing.assert_array_equal(got[column], want[column])
    np.testing.assert_allclose(got["max_corr"], want["max_corr"], atol=1e-6, rtol=0)


def test_a_seen_units_best_partner_among_units_with_full_rows_is_found_from_their_rows():
    """Model b's unit 5 copies, with a little noise on every token, a ReLU of model a that fires on about 9 of
    40000 tokens: the subsample sees a's ReLU constant (never a candidate), but its full row holds its correlation
    with every unit of b, so b's unit 5 takes exact mode's partner and max from it."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(2)
    tokens, width = 40_000, 30
    rare = torch.relu(torch.randn(tokens, generator=g, dtype=torch.float64) - 3.5) * 10  # P(z > 3.5) = 2.3e-4
    acts = {m: {"s": torch.randn(tokens, width, generator=g, dtype=torch.float64)} for m in MODELS}
    acts["a"]["s"][:, 0] = rare
    acts["b"]["s"][:, 5] = rare + 0.01 * torch.randn(tokens, generator=g, dtype=torch.float64)
    batches = [{m: {"s": x["s"][i:i + 4000]} for m, x in acts.items()} for i in range(0, tokens, 4000)]
    exact = compare_activations(batches, seed=3)
    sketch = compare_activations(batches, mode="sketch", subsample=0.02, candidates=2, seed=3)
    assert sketch.units.set_index(["model", "unit"]).loc[("a", 0), "barely_seen"]
    rows = [(c.pairs["model"] == "b") & (c.pairs["unit"] == 5) & (c.pairs["other_model"] == "a") for c in (exact, sketch)]
    want, got = exact.pairs[rows[0]].iloc[0], sketch.pairs[rows[1]].iloc[0]
    assert want["partner_unit"] == 0 and want["max_corr"] > 0.5
    assert got["partner_unit"] == 0 and abs(got["max_corr"] - want["max_corr"]) < 1e-6


def test_atoms_name_the_value_most_subsample_tokens_sit_on_floor_or_ceiling_and_count_the_tokens_off_it():
    from universality.compare._sketch import _Atoms
    x = torch.zeros(100, 3, dtype=torch.float64)
    x[:5, 0] = torch.arange(1.0, 6.0)  # a ReLU: floor 0 on 95 tokens
    x[:, 1] = -2.0
    x[:3, 1] = -torch.arange(3.0, 6.0)  # a negated ReLU at -2: its ceiling on 97 tokens
    x[:, 2] = torch.linspace(-1, 1, 100)  # no atom: one token on each bound
    atoms = _Atoms(3)
    atoms.update(x[:60])
    atoms.update(x[60:])
    assert atoms.atom().tolist() == [0.0, -2.0, -1.0]
    assert atoms.seen().tolist() == [5, 3, 99]


def test_without_a_memory_budget_full_rows_take_at_most_the_default_share_of_available_memory(runs, monkeypatch):
    """Barely seen units can be many (an SAE's dead and rare latents): with no budget the rows still fit
    `DEFAULT_BUDGET_FRACTION` of the memory available (here made to hold pass 1's resident memory and one row)."""
    from universality.compare import _sketch
    _, batches, _, free = runs
    resident = sum(free.plan.resident.values())
    monkeypatch.setattr(_sketch, "available_memory", lambda device: int((resident + 10**6) / _sketch.DEFAULT_BUDGET_FRACTION))
    monkeypatch.setattr(_sketch, "_ROW_BYTES", int(10**6 / (1.5 * len(free.units))))  # one row fits, not two
    with pytest.warns(UserWarning, match=r"^2 of 300 live units moved on fewer than 32"):
        capped = compare_activations(batches, mode="sketch", subsample=0.05, candidates=4)
    assert capped.units["baseline_exact"].sum() == 1
