"""Memory-budgeted plans (issue 9): the co-moments cut into unit-set blocks and passes give the same
tables as one pass, resume per pass, and refuse bad budgets and streams in one line; each test is
named for the invariant it checks."""

import tomllib

import numpy as np
import pandas as pd
import pytest
import torch

from universality import UniversalityError
from universality.api import run_experiment
from universality.compare import compare_activations
from universality.config import parse_config
from universality.moments import budget_for_passes, parse_bytes, plan_passes

from _planned import assert_same_tables, budget_for
from test_pipeline import SMALL as PIPELINE_SMALL

torch.set_num_threads(1)


def _activations(seed=0, tokens=3000, sets=(40, 24, 32), models="abc"):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(tokens, 6, generator=g)
    return {m: {f"s{k}": latent @ torch.randn(6, n, generator=g) + torch.randn(tokens, n, generator=g) + 5
                for k, n in enumerate(sets)} for m in models}


def _batches(acts, rows=500):
    tokens = next(iter(next(iter(acts.values())).values())).shape[0]
    return [{m: {s: x[i:i + rows] for s, x in sets.items()} for m, sets in acts.items()} for i in range(0, tokens, rows)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tables_are_the_same_under_one_two_and_many_passes(dtype):
    batches = _batches(_activations())
    layout = {m: {s: x.shape[1] for s, x in sets.items()} for m, sets in batches[0].items()}
    whole = compare_activations(batches, rotations=2, dtype=dtype)
    assert len(whole.plan.passes) == 1
    seen = set()
    for passes in (2, 4, 12):
        budget = budget_for(layout, passes, dtype=dtype)
        planned = compare_activations(lambda: iter(batches), rotations=2, dtype=dtype, memory_budget=budget)
        assert len(planned.plan.passes) == passes and max(planned.plan.pass_bytes) <= budget
        seen.add(len(planned.plan.passes))
        assert_same_tables(whole, planned)
    assert len(seen) == 3


def test_plan_blocks_cover_every_cross_entry_once_and_grams_come_first():
    layout = {"a": {"x": 30, "y": 20}, "b": {"x": 30, "y": 20}, "c": {"z": 50}}
    one = plan_passes(layout, budget=None, batch_tokens=64)
    budget = sum(one.resident.values()) + 4 * 50 * 30 + 10  # room for the largest unit-set pair, c.z x a.x
    plan = plan_passes(layout, budget=budget, batch_tokens=64)
    covered = np.zeros((150, 150), dtype=int)
    for k, blocks in enumerate(plan.passes):
        for block in blocks:
            assert k == 0 or not block.is_gram
            covered[block.row_start:block.row_stop, block.column_start:block.column_stop] += 1
    expected = np.zeros((150, 150), dtype=int)
    for start, stop in ((0, 30), (30, 50), (50, 80), (80, 100), (100, 150)):
        expected[start:stop, start:stop] = 1  # Grams
    expected[0:50, 50:150] = expected[50:100, 100:150] = 1  # every later model
    np.testing.assert_array_equal(covered, expected)
    assert len(plan.passes) > 2 and max(plan.pass_bytes) <= budget


def test_budget_for_passes_is_the_smallest_budget_that_plans_that_many_passes():
    layout = {m: {f"s{k}": n for k, n in enumerate((40, 24, 32))} for m in "abc"}
    settings = dict(dtype="float64", batch_tokens=500, rotations=2)
    one = plan_passes(layout, budget=None, **settings)
    assert budget_for_passes(layout, 1, **settings) == one.pass_bytes[0]
    for passes in (2, 3, 12):
        budget = budget_for_passes(layout, passes, **settings)
        assert len(plan_passes(layout, budget=budget, **settings).passes) == passes
        assert len(plan_passes(layout, budget=budget - 1, **settings).passes) > passes
    for unplannable in (6, 22):  # blocks cut at unit-set boundaries: 5 or 7 passes, and 21 at most
        with pytest.raises(UniversalityError, match=f"no memory budget plans exactly {unplannable} passes") as error:
            budget_for_passes(layout, unplannable, **settings)
        assert "\n" not in str(error.value)


def test_a_budget_below_one_block_is_one_line_naming_the_need():
    batches = _batches(_activations())
    with pytest.raises(UniversalityError, match=r"memory_budget .* below one pass's smallest need") as error:
        compare_activations(batches, memory_budget="10kB")
    assert "\n" not in str(error.value)


def test_a_one_shot_iterator_is_refused_when_the_plan_needs_several_passes():
    batches = _batches(_activations())
    layout = {m: {s: x.shape[1] for s, x in sets.items()} for m, sets in batches[0].items()}
    budget = budget_for(layout, 3, rotations=1)
    with pytest.raises(UniversalityError, match="one-shot iterator; pass a callable"):
        compare_activations(iter(batches), memory_budget=budget)
    assert compare_activations(iter(batches), memory_budget=10**9).plan is not None  # one pass: fine


def test_a_stream_that_changes_between_passes_is_refused():
    batches = _batches(_activations())
    layout = {m: {s: x.shape[1] for s, x in sets.items()} for m, sets in batches[0].items()}
    calls = []

    def changing():
        calls.append(1)
        return iter(batches if len(calls) == 1 else batches[:-1])
    with pytest.raises(UniversalityError, match="pass 2 saw .* tokens but pass 1 saw"):
        compare_activations(changing, memory_budget=budget_for(layout, 3, rotations=1))


def test_a_stream_that_does_not_yield_the_layout_it_was_planned_for_is_refused_before_it_runs(tmp_path):
    from universality.config import CompareConfig, ScaleConfig
    from universality.pipeline._planned import stream_and_compare
    batches = _batches(_activations())
    layout = {m: {s: x.shape[1] for s, x in sets.items()} for m, sets in batches[0].items()}
    for declared, tokens, message in ((layout | {"b": {"s0": 40, "s1": 25, "s2": 32}}, 500, "model 'b' streams"),
                                      (layout, 499, "the first batch has 500 tokens where 499 were planned")):
        with pytest.raises(UniversalityError, match=f"run x: {message}") as error:
            stream_and_compare("x", "inputs", tmp_path, len(batches), lambda start: ((b, None) for b in batches[start:]),
                               layout=declared, batch_tokens=tokens, compare=CompareConfig(), scale=ScaleConfig(),
                               device="cpu", on_progress=lambda *progress: None, factory=None)
        assert "\n" not in str(error.value)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("text, expected", [("12GiB", 12 * 2**30), ("500 MB", 500 * 10**6), ("2e3", 2000),
                                            (4096, 4096), ("1.5kib", 1536)])
def test_sizes_parse_in_si_and_binary_units(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["", "12 parsecs", "-3GB", 0, True, "GiB"])
def test_bad_sizes_are_one_line(bad):
    with pytest.raises(UniversalityError, match="memory_budget must be"):
        parse_bytes(bad)


# threads pinned: each run trains its own seeds, and a different thread count rounds differently
SMALL = PIPELINE_SMALL.replace('name = "small"', 'name = "budgeted"').replace("[train]\n", "[train]\nthreads = 1\n") + """
[scale]
memory_budget = BUDGET
activation_cache = CACHE
"""
# calibration needs a one-pass state: off here, so one-pass and multi-pass tables have the same columns
UNCALIBRATED = "\n[calibration]\nenabled = false\n"


def _config(budget, name="budgeted", cache="auto"):
    text = SMALL.replace("BUDGET", repr(budget)).replace("CACHE", repr(cache)).replace('"budgeted"', repr(name))
    return parse_config(tomllib.loads(text + UNCALIBRATED))


def _tables(run_dir):
    return {t: pd.read_parquet(run_dir / "tables" / f"{t}.parquet") for t in ("units", "pairs", "layers")}


def test_a_run_under_three_budgets_gives_the_same_tables(tmp_path):
    whole = run_experiment(_config("none"), runs_dir=tmp_path)
    layout = whole.comparison.moments.layout
    batch_tokens = whole.comparison.plan.batch_tokens
    expected = _tables(whole.run_dir)
    for passes, cache in ((2, "none"), (6, "auto")):  # models re-run in every pass, or activations read back
        budget = budget_for(layout, passes, dtype="float32", batch_tokens=batch_tokens)
        result = run_experiment(_config(budget, name=f"p{passes}", cache=cache), runs_dir=tmp_path)
        assert len(result.comparison.plan.passes) == passes and max(result.comparison.plan.pass_bytes) <= budget
        for name, table in _tables(result.run_dir).items():
            pd.testing.assert_frame_equal(table, expected[name], check_exact=False, rtol=0, atol=1e-6)
        assert not list((result.run_dir / "moments").glob("pass-*"))  # reduced passes leave only pass 1's state
        assert not (result.run_dir / "activation_cache").exists()  # removed once the comparison is done


def test_an_interrupted_multi_pass_run_resumes_at_the_pass_it_reached(tmp_path, monkeypatch):
    import universality.pipeline._planned as planned
    whole = run_experiment(_config("none", name="whole"), runs_dir=tmp_path)
    budget = budget_for(whole.comparison.moments.layout, 6, dtype="float32",
                         batch_tokens=whole.comparison.plan.batch_tokens)

    class Interrupt(Exception):
        pass

    def kill(task, done, total):
        if task.startswith("stream activations (pass 3") and done == 3:  # after batch 2 was saved
            raise Interrupt
    monkeypatch.setattr(planned, "CHECKPOINT_SECONDS", 0.0)
    with pytest.raises(Interrupt):
        run_experiment(_config(budget), runs_dir=tmp_path, on_progress=kill)
    seen = []
    result = run_experiment(_config(budget), runs_dir=tmp_path, on_progress=lambda t, d, n: seen.append((t, d)))
    streamed = {t for t, _ in seen if t.startswith("stream activations")}
    assert not any(t.startswith("stream activations (pass 1") or t.startswith("stream activations (pass 2")
                   for t in streamed), streamed  # passes 1 and 2 were not streamed again
    assert ("stream activations (pass 3 of %d)" % len(result.comparison.plan.passes), 2) in seen  # resumed mid-pass
    for name, table in _tables(result.run_dir).items():
        pd.testing.assert_frame_equal(table, _tables(whole.run_dir)[name], check_exact=False, rtol=0, atol=1e-6)


def test_fast_rotations_give_the_haar_baseline_within_tolerance_and_the_same_max_corr():
    batches = _batches(_activations(sets=(300, 200)), rows=1000)
    haar, other_haar = (compare_activations(batches, rotations=4, seed=seed) for seed in (0, 1))
    fast = compare_activations(batches, rotations=4, rotation="fast")
    np.testing.assert_array_equal(haar.pairs.max_corr.to_numpy(), fast.pairs.max_corr.to_numpy())
    baseline = {name: c.pairs.baseline_max_corr.to_numpy() for name, c in
                (("haar", haar), ("other", other_haar), ("fast", fast))}
    noise = np.abs(baseline["haar"] - baseline["other"]).mean()  # two Haar draws differ per unit by this much
    assert np.abs(baseline["haar"] - baseline["fast"]).mean() < 1.3 * noise
    assert abs(baseline["haar"].mean() - baseline["fast"].mean()) < 0.005


def test_an_unwritable_cache_directory_is_one_line_and_nothing_is_written(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    whole = run_experiment(_config("none", name="whole"), runs_dir=tmp_path)
    budget = budget_for(whole.comparison.moments.layout, 3, dtype="float32",
                         batch_tokens=whole.comparison.plan.batch_tokens)
    with pytest.raises(UniversalityError, match="activation_cache directory .* is not writable") as error:
        run_experiment(_config(budget, name="whole", cache=str(blocked / "cache")), runs_dir=tmp_path)
    assert "\n" not in str(error.value)
    pd.testing.assert_frame_equal(_tables(tmp_path / "whole")["units"], _tables(whole.run_dir)["units"])


def test_univ_plan_states_the_passes_and_a_sketch_streams_its_subsample_share_of_the_gemms():
    from universality.pipeline._dry_plan import experiment_plan
    exact_plan, exact = experiment_plan(_config("none"))
    text = SMALL.replace("BUDGET", '"none"').replace("CACHE", '"auto"') + 'mode = "sketch"\nsubsample = 0.25\n'
    sketch_plan, sketch = experiment_plan(parse_config(tomllib.loads(text)))
    assert exact["passes"] == "1" and sketch["passes"].startswith("sketch: 1 over a 0.25 subsample")
    streaming = [float(facts["total TFLOP"].split("streaming ")[1].split(",")[0]) for facts in (exact, sketch)]
    assert streaming[1] == pytest.approx(0.25 * streaming[0], rel=1e-2)
    assert "GFLOP/s measured now" in exact["this machine"]
