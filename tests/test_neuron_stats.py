"""Per-neuron statistics: streamed moments against scipy, weight statistics against a float64 reference,
within-layer percentiles of universal neurons on a hand-made table."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from universality.neurons._neuron_stats import (ActivationMoments, NeuronStatsAccumulator, plot_universal_vs_rest,
                                                universal_vs_rest)
from universality.neurons._weights import weight_statistics
from universality.errors import UniversalityError


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _skewed(tokens=3000, units=5, offset=0.0, seed=0):
    """float64 [tokens, units]: gamma columns of different shapes (skew and kurtosis far from 0 and 3), some < 0."""
    rng = np.random.default_rng(seed)
    shapes = np.linspace(0.5, 4.0, units)
    return torch.from_numpy(rng.gamma(shapes, size=(tokens, units)) - 1.0 + offset)


def _scipy_table(x):
    x = x.numpy()
    return pd.DataFrame({"mean": x.mean(0), "var": x.var(0), "skew": stats.skew(x, axis=0),
                         "kurtosis": stats.kurtosis(x, axis=0, fisher=False), "freq": (x > 0).mean(0)})


def _streamed(x, size):
    acc = ActivationMoments(x.shape[1])
    for start in range(0, x.shape[0], size):
        acc.update(x[start:start + size])
    return acc


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_moments_match_scipy_float64(offset):
    x = _skewed(offset=offset)
    pd.testing.assert_frame_equal(_streamed(x, 701).table(), _scipy_table(x), rtol=1e-9, atol=0)


def test_sharded_merge_equals_single_pass():
    x = _skewed(tokens=2000)
    single = ActivationMoments(5).update(x)
    left, right = _streamed(x[:300], 97), _streamed(x[300:], 450)
    merged = left.merge(right)
    assert merged.count_ == single.count_ and torch.equal(merged.positive_, single.positive_)
    pd.testing.assert_frame_equal(merged.table(), single.table(), rtol=1e-12, atol=0)
    assert left.count_ == 300  # merge returns a new state


def test_large_batch_is_split_into_bounded_chunks(monkeypatch):
    import universality.neurons._neuron_stats as module
    monkeypatch.setattr(module, "_CHUNK_ENTRIES", 64)  # 12 rows per chunk of 5 units
    x = _skewed(tokens=500)
    pd.testing.assert_frame_equal(ActivationMoments(5).update(x).table(), _scipy_table(x), rtol=1e-9, atol=0)


def test_dead_unit_has_nan_skew_and_kurtosis():
    x = torch.cat([torch.randn(100, 1, dtype=torch.float64), torch.full((100, 1), 3.0, dtype=torch.float64),
                   torch.zeros(100, 1, dtype=torch.float64)], dim=1)
    table = ActivationMoments(3).update(x).table()
    assert table.loc[1:, ["skew", "kurtosis"]].isna().all().all()
    assert table.loc[0, ["skew", "kurtosis"]].notna().all()
    assert table.freq.tolist() == [pytest.approx((x[:, 0] > 0).double().mean().item()), 1.0, 0.0]


def test_neuron_stats_pairs_pre_and_post_by_layer():
    pre = {layer: _skewed(tokens=1200, units=4, seed=layer) for layer in range(2)}
    stream = {"a": {**{f"blocks.{l}.mlp.hook_pre": x for l, x in pre.items()},
                    **{f"blocks.{l}.mlp.hook_post": torch.nn.functional.gelu(x) for l, x in pre.items()}},
              "b": {"blocks.0.mlp.hook_post": pre[0][:, :3], "sae.latents": pre[1][:, :2]}}
    acc = NeuronStatsAccumulator()
    for start in range(0, 1200, 500):
        acc.update({m: {s: x[start:start + 500] for s, x in sets.items()} for m, sets in stream.items()})
    table = acc.table()
    assert list(table.columns[:3]) == ["model", "unit_set", "unit"]
    assert len(table) == 4 + 4 + 3 + 2
    assert set(table.unit_set) == {"blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post", "sae.latents"}
    rows = table[(table.model == "a") & (table.unit_set == "blocks.1.mlp.hook_post")]
    expected_pre = _scipy_table(pre[1]).add_prefix("pre_")
    expected_post = _scipy_table(torch.nn.functional.gelu(pre[1])).add_prefix("post_")
    pd.testing.assert_frame_equal(rows[expected_pre.columns].reset_index(drop=True), expected_pre, rtol=1e-9)
    pd.testing.assert_frame_equal(rows[expected_post.columns].reset_index(drop=True), expected_post, rtol=1e-9)
    assert table[table.model == "b"].filter(like="pre_").isna().all().all()  # no hook_pre streamed for b


def test_neuron_stats_merge_equals_single_stream():
    x = _skewed(tokens=900, units=3)
    batch = lambda rows: {"m": {"blocks.0.mlp.hook_pre": x[rows], "blocks.0.mlp.hook_post": x[rows].relu()}}
    single = NeuronStatsAccumulator().update(batch(slice(None)))
    merged = NeuronStatsAccumulator().update(batch(slice(0, 200))).merge(
        NeuronStatsAccumulator().update(batch(slice(200, None))))
    pd.testing.assert_frame_equal(merged.table(), single.table(), rtol=1e-12)


def test_neuron_stats_rejects_unpaired_pre_and_changed_layout():
    x = torch.randn(10, 3)
    with pytest.raises(UniversalityError, match="hook_post"):
        NeuronStatsAccumulator().update({"m": {"blocks.0.mlp.hook_pre": x}})
    acc = NeuronStatsAccumulator().update({"m": {"blocks.0.mlp.hook_post": x}})
    with pytest.raises(UniversalityError, match="layout"):
        acc.update({"m": {"blocks.0.mlp.hook_post": torch.randn(10, 4)}})


def _weights(seed=0, d_model=6, d_mlp=10, vocab=40, layers=2):
    g = torch.Generator().manual_seed(seed)
    weights = {"W_U": torch.randn(d_model, vocab, generator=g), "W_E": torch.randn(vocab + 3, d_model, generator=g)}
    for l in range(layers):
        weights[f"blocks.{l}.mlp.W_in"] = torch.randn(d_model, d_mlp, generator=g)
        weights[f"blocks.{l}.mlp.b_in"] = torch.randn(d_mlp, generator=g)
        weights[f"blocks.{l}.mlp.W_out"] = torch.randn(d_mlp, d_model, generator=g)
    return weights


def test_weight_statistics_match_float64_reference():
    weights = _weights()
    table = weight_statistics(weights, block=3)  # blocks of 3 neurons: several blocks per layer
    w = {k: v.double().numpy() for k, v in weights.items()}
    for layer in range(2):
        w_in, w_out = w[f"blocks.{layer}.mlp.W_in"].T, w[f"blocks.{layer}.mlp.W_out"]  # [d_mlp, d_model]
        rows = table[table.unit_set == f"blocks.{layer}.mlp.hook_post"]
        assert rows.unit.tolist() == list(range(10))
        in_norm, out_norm = np.linalg.norm(w_in, axis=1), np.linalg.norm(w_out, axis=1)
        np.testing.assert_allclose(rows.w_in_norm, in_norm, rtol=1e-12)
        np.testing.assert_allclose(rows.w_out_norm, out_norm, rtol=1e-12)
        np.testing.assert_allclose(rows.b_in, w[f"blocks.{layer}.mlp.b_in"], rtol=0)
        np.testing.assert_allclose(rows.cos_in_out, [a @ b / np.linalg.norm(a) / np.linalg.norm(b)
                                                     for a, b in zip(w_in, w_out)], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rows.l2_penalty, (w_in**2).sum(1) + (w_out**2).sum(1), rtol=1e-12)
        for prefix, values in (("vocab", w_out @ w["W_U"]), ("embed", w_in @ w["W_E"].T)):  # [d_mlp, vocab]
            np.testing.assert_allclose(rows[f"{prefix}_mean"], values.mean(1), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(rows[f"{prefix}_var"], values.var(1), rtol=1e-10)
            np.testing.assert_allclose(rows[f"{prefix}_skew"], stats.skew(values, axis=1), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(rows[f"{prefix}_kurtosis"], stats.kurtosis(values, axis=1, fisher=False),
                                       rtol=1e-9)


def test_weight_statistics_check_names_and_shapes():
    weights = _weights()
    assert set(weight_statistics(weights, layers=[1]).unit_set) == {"blocks.1.mlp.hook_post"}
    with pytest.raises(UniversalityError, match="layer 5"):
        weight_statistics(weights, layers=[5])
    with pytest.raises(UniversalityError, match="b_in"):
        weight_statistics({k: v for k, v in weights.items() if k != "blocks.0.mlp.b_in"})
    with pytest.raises(UniversalityError, match=r"W_out has shape \[10, 7\]"):
        weight_statistics(weights | {"blocks.0.mlp.W_out": torch.randn(10, 7)})


def _hand_table():
    """Two layers of one model: layer 0 x = 1..4 (universal: x=4), layer 1 x = 10, 20 (universal: x=10)."""
    return pd.DataFrame({"model": "a", "unit_set": ["l0"] * 4 + ["l1"] * 2,
                         "x": [3.0, 1.0, 4.0, 2.0, 20.0, 10.0], "y": [1.0, 1.0, 1.0, np.nan, 5.0, 6.0],
                         "universal": [False, False, True, False, None, True]})


def test_universal_percentiles_are_within_layer():
    summary = universal_vs_rest(_hand_table(), ["x", "y"]).set_index("statistic")
    # x: universal percentiles 100 (4 - 1/2) / 4 = 87.5 in layer 0 and 100 (1 - 1/2) / 2 = 25 in layer 1
    assert summary.loc["x", "universal"] == 2
    assert summary.loc["x", "median"] == pytest.approx(56.25)
    assert summary.loc["x", "q1"] == pytest.approx(25 + 0.25 * 62.5)
    # rest: layer 0 ranks 3, 1, 2 of 4 -> 62.5, 12.5, 37.5; layer 1 rank 2 of 2 -> 75; median 50
    assert summary.loc["x", "rest_median"] == pytest.approx(50.0)
    # y: three ties in layer 0 (NaN excluded: n = 3) share rank 2 -> 50; layer 1 rank 2 of 2 -> 75
    assert summary.loc["y", "median"] == pytest.approx(62.5)


def test_universal_vs_rest_names_missing_columns():
    with pytest.raises(UniversalityError, match="'z'"):
        universal_vs_rest(_hand_table(), ["z"])


def test_plot_file_is_written(tmp_path):
    path = plot_universal_vs_rest(universal_vs_rest(_hand_table(), ["x", "y"]), tmp_path / "universal.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [path]
