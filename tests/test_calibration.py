"""Calibrated universality (issue 10 part 2): planted twins in a strongly correlated unit set are
calibrated-universal where the paper's rule misses them, p-values are uniform under the null, the
columns follow their definitions, and bad settings are refused in one line."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from universality import UniversalityError
from universality.compare import compare_activations

TOKENS, WIDTH, TWINS = 4000, 128, 12


def _planted(seed=1):
    """Three models of one 128-unit set dominated by a rank-2 latent (so rotated units correlate
    strongly with every unit: baselines near 0.9); 12 units per model are the same feature in every
    model (twins, correlation near 1), at model-specific positions."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(TOKENS, 2, generator=g)
    features = torch.randn(TOKENS, TWINS, generator=g)
    loading = torch.randn(2, TWINS, generator=g)
    batch, twins = {}, {}
    for m in "abc":
        x = latent @ torch.randn(2, WIDTH, generator=g) + 0.3 * torch.randn(TOKENS, WIDTH, generator=g)
        where = torch.randperm(WIDTH, generator=g)[:TWINS]
        x[:, where] = latent @ loading + features + 0.1 * torch.randn(TOKENS, TWINS, generator=g)
        batch[m], twins[m] = {"s": x}, set(where.tolist())
    return [batch], twins


@pytest.fixture(scope="module")
def planted():
    batches, twins = _planted()
    return compare_activations(batches, seed=0).calibrate(rotations=32, alpha=0.01), twins


def test_planted_twins_are_calibrated_universal_where_the_papers_rule_misses_them(planted):
    calibrated, twins = planted
    units = calibrated.units
    is_twin = np.array([u in twins[m] for m, u in zip(units.model, units.unit)])
    assert units.calibrated_universal[is_twin].all()
    assert not units.calibrated_universal[~is_twin].any()
    assert units.universal[is_twin].mean() < 0.5  # the paper's rule misses most: their baselines are high
    assert units.mean_baseline[is_twin].median() > 0.5


def _rotated_reference(batch: dict, rotations: list[tuple[int, int]]) -> np.ndarray:
    """Direct float64 rotated maxima from the token-level activations, in the pairs table's row order:
    column k is max_j corr(x_a,i, (sign Q_r y_b)_j) for (r, sign) = rotations[k], Q_r the Haar rotation r
    of the unit set (rotated units y Q_r^T)."""
    from universality.compare._rotations import rotation
    x = {m: batch[m]["s"].double().numpy() for m in batch}
    blocks = []
    for a in batch:
        for b in batch:
            if b != a:
                columns = []
                for r, sign in rotations:
                    rotated = sign * (x[b] @ rotation("auto", 0, 0, r, WIDTH).dense().numpy().T)  # [tokens, n]
                    columns.append(np.corrcoef(x[a].T, rotated.T)[:WIDTH, WIDTH:].max(axis=1))
                blocks.append(np.stack(columns, axis=1))
    return np.concatenate(blocks)


def test_calibration_columns_follow_their_definitions(planted):
    """32 rotated maxima in antithetic pairs, Q_0 .. Q_15 (Q_0 the comparison's own) and -Q_0 .. -Q_15 (the
    maxima against -Q_r are minus the minima against Q_r), checked against a direct float64 computation
    from the tokens."""
    calibrated, _ = planted
    pairs = calibrated.pairs
    [batch] = _planted()[0]
    reference = _rotated_reference(batch, [(r, 1) for r in range(16)] + [(r, -1) for r in range(16)])
    from universality.compare._universality import rotated_maxima
    rotated = rotated_maxima(calibrated.moments, rotations=32, seed=0)
    assert np.abs(rotated - reference).max() < 1e-5  # float32 state against float64 tokens
    assert np.allclose(rotated[:, 0], pairs.baseline_max_corr)  # Q_0 is the comparison's own rotation
    actual = pairs.max_corr.to_numpy()
    assert np.allclose(pairs.baseline_mean, rotated.mean(axis=1))
    assert np.allclose(pairs.baseline_std, rotated.std(axis=1, ddof=1))
    assert np.allclose(pairs.z, (actual - rotated.mean(axis=1)) / rotated.std(axis=1, ddof=1))
    assert np.allclose(pairs.p_empirical, (1 + (rotated >= actual[:, None]).sum(axis=1)) / 33)
    scale = rotated.std(axis=1, ddof=1) * math.sqrt(6) / math.pi
    gumbel = stats.gumbel_r(loc=rotated.mean(axis=1) - np.euler_gamma * scale, scale=scale)
    assert np.allclose(pairs.p_value, gumbel.sf(actual), rtol=1e-9, atol=1e-300)
    for _, group in pairs.groupby(["model", "other_model"]):
        assert np.allclose(group.q_value, stats.false_discovery_control(group.p_value, method="bh"))
    worst = pairs.groupby(["model", "unit_set", "unit"], sort=False).q_value.max().to_numpy()
    assert np.allclose(calibrated.units.q_value, worst)
    assert calibrated.rotations == 1 and calibrated.units.universal.dtype == bool


def test_p_values_are_uniform_under_the_null():
    """Independent models: the actual max is one more draw of the rotated maxima' distribution, so its
    p-values are uniform (two-sided KS, rejected at level 0.001 only) and nothing is calibrated-universal."""
    g = torch.Generator().manual_seed(4)
    batch = {m: {"s": torch.randn(3000, 64, generator=g)} for m in "abc"}
    calibrated = compare_activations([batch], seed=2).calibrate()
    assert stats.kstest(calibrated.pairs.p_value, "uniform").pvalue > 0.001
    assert not calibrated.units.calibrated_universal.any()


def test_calibrating_within_the_comparisons_own_rotations_uses_them_as_they_are():
    """R at most the comparison's own count: its first R independent rotations, read from its columns."""
    batches, _ = _planted(seed=3)
    whole = compare_activations(batches, rotations=6, seed=1)
    first = whole.pairs[[f"baseline_max_corr_r{r}" for r in range(3)]].to_numpy()
    np.testing.assert_array_equal(whole.calibrate(rotations=3).pairs.baseline_mean, first.mean(axis=1))


def test_calibrating_beyond_the_comparisons_own_rotations_does_not_depend_on_their_count():
    """Beyond its own count, the R maxima come from the state in antithetic pairs whatever the comparison had."""
    batches, _ = _planted(seed=3)
    one, two = (compare_activations(batches, rotations=own, seed=1).calibrate(rotations=6) for own in (1, 2))
    for column in ("baseline_mean", "baseline_std", "z", "p_value", "q_value"):
        np.testing.assert_allclose(one.pairs[column], two.pairs[column], rtol=1e-6, atol=1e-7)
    assert (one.units.calibrated_universal == two.units.calibrated_universal).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 0}, "alpha must be a number in (0, 1)"), ({"alpha": 1.5}, "alpha must be a number in (0, 1)"),
    ({"rotations": 1}, "calibration needs rotations >= 2"), ({"rotations": 0}, "rotations must be an integer >= 1"),
])
def test_bad_calibration_settings_are_refused_in_one_line(kwargs, message):
    batch = {m: {"s": torch.randn(50, 4)} for m in "ab"}
    with pytest.raises(UniversalityError) as error:
        compare_activations([batch]).calibrate(**kwargs)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_state_without_cross_moments_asks_to_compare_again_with_the_rotations():
    batches = [{m: {"s": torch.randn(200, 64)} for m in "abc"}]
    budgeted = compare_activations(batches, memory_budget=_two_pass_budget(batches))
    assert len(budgeted.plan.passes) >= 2
    with pytest.raises(UniversalityError, match=r"compare again with rotations=32"):
        budgeted.calibrate()


def _two_pass_budget(batches):
    from universality.moments import budget_for_passes
    layout = {m: {s: x.shape[1] for s, x in sets.items()} for m, sets in batches[0].items()}
    return budget_for_passes(layout, 2, batch_tokens=200, dtype="float64")


def test_a_one_pass_run_carries_calibrated_columns_and_a_run_without_calibration_does_not(tmp_path):
    """The same run twice (models and moments reused): with calibration, then without; the paper's
    columns are the same in both."""
    import tomllib
    import pandas as pd
    from universality.api import run_experiment
    from universality.config import parse_config
    from test_pipeline import SMALL
    text = SMALL.replace("[train]\n", "[train]\nthreads = 1\n") + '\n[scale]\nmemory_budget = "none"\n'
    tables = []
    for section in ("[calibration]\nrotations = 8\n", "[calibration]\nenabled = false\n"):
        run = run_experiment(parse_config(tomllib.loads(text + section)), runs_dir=tmp_path)
        tables.append({name: pd.read_parquet(run.run_dir / "tables" / f"{name}.parquet") for name in ("units", "pairs")})
    calibrated, plain = tables
    assert {"z", "p_value", "q_value", "calibrated_universal"} <= set(calibrated["units"].columns)
    assert {"baseline_mean", "baseline_std", "p_empirical"} <= set(calibrated["pairs"].columns)
    assert "calibrated_universal" not in plain["units"]
    for name in ("units", "pairs"):  # the paper's columns do not move
        pd.testing.assert_frame_equal(calibrated[name][plain[name].columns], plain[name])


def test_the_report_section_counts_live_units_by_both_rules_with_examples_of_disagreement(planted):
    from universality.report import calibration_sections
    calibrated, twins = planted
    units = calibrated.units
    [section] = calibration_sections(units)
    table = section.tables[0][1].set_index("")
    live = units[~units.dead]
    assert table.to_numpy().sum() == len(live)
    assert table.loc["paper: not", "calibrated: universal"] == int((~live.universal & live.calibrated_universal).sum())
    examples = section.tables[1][1]
    assert len(examples) == 5 and all(u in twins[m] for m, u in zip(examples.model, examples.unit))
    assert calibration_sections(units.drop(columns="calibrated_universal")) == []
