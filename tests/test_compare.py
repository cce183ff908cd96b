import numpy as np
import pandas as pd
import pytest
import torch

import universality
from universality import UniversalityError, compare_activations
from universality.compare import rotation
from universality.moments import MomentAccumulator

from _planned import budget_for


def _chunks(models, size):
    tokens = next(iter(next(iter(models.values())).values())).shape[0]
    return [{m: {s: x[i:i + size] for s, x in sets.items()} for m, sets in models.items()}
            for i in range(0, tokens, size)]


def test_correlation_matches_float64_reference_where_one_pass_float32_fails():
    g = torch.Generator().manual_seed(0)
    tokens = 20_000
    latent = torch.randn(tokens, 3, generator=g)
    a = (latent @ torch.randn(3, 6, generator=g) + torch.randn(tokens, 6, generator=g)) * 0.5 + 1e3
    b = (latent @ torch.randn(3, 5, generator=g) + torch.randn(tokens, 5, generator=g)) * 0.5 + 1e3
    models = {"a": {"units": a}, "b": {"units": b}}
    result = compare_activations(_chunks(models, 4096))
    a64, b64 = a.double() - a.double().mean(0), b.double() - b.double().mean(0)
    reference = (a64.T @ b64) / torch.outer(a64.norm(dim=0), b64.norm(dim=0))
    assert (result.correlation("a", "b") - reference).abs().max() < 1e-4
    # the naive one-pass float32 formula is far off on the same data: the test can tell them apart
    n = tokens
    naive_cross = a.T @ b - torch.outer(a.sum(0), b.sum(0)) / n
    naive_var_a = (a * a).sum(0) - a.sum(0) ** 2 / n
    naive_var_b = (b * b).sum(0) - b.sum(0) ** 2 / n
    naive = naive_cross / torch.outer(naive_var_a, naive_var_b).abs().sqrt()
    assert (naive.double() - reference).abs().nan_to_num(1.0).max() > 1e-2


def test_rotation_baseline_equals_explicit_pass_over_rotated_activations():
    g = torch.Generator().manual_seed(1)
    tokens = 5000
    latent = torch.randn(tokens, 4, generator=g)
    acts = {m: {"s0": latent @ torch.randn(4, 8, generator=g) + torch.randn(tokens, 8, generator=g) + 3,
                "s1": torch.relu(latent @ torch.randn(4, 5, generator=g) + torch.randn(tokens, 5, generator=g))}
            for m in ("a", "b", "c")}
    result = compare_activations(_chunks(acts, 1000), rotations=2, seed=7)
    models = list(acts)
    for b in models:
        for a in models:
            if a == b:
                continue
            maxima = []
            for r in range(2):
                rotated = {name: x.double() @ rotation("haar", 7, k, r, x.shape[1]).dense().T
                           for k, (name, x) in enumerate(acts[b].items())}
                explicit = MomentAccumulator({a: {"all": 13}, b: {"all": 13}}, dtype="float64")
                explicit.update({a: {"all": torch.cat(list(acts[a].values()), 1).double()},
                                 b: {"all": torch.cat(list(rotated.values()), 1)}})
                from universality.compare import pearson
                maxima.append(pearson(explicit, a, b).max(dim=1).values)
            expected = torch.stack(maxima).mean(0).numpy()
            got = result.pairs.query("model == @a and other_model == @b")["baseline_max_corr"].to_numpy()
            np.testing.assert_allclose(got, expected, atol=1e-5)


def _planted(seed=0, models=3, sets=(120, 80), shared_fraction=0.1, tokens=20_000):
    """Activations in which a known 10% of units carry shared latent signals (heavy-tailed, sparse),
    hidden under a different permutation, scale and offset in each model; the rest are independent."""
    rng = np.random.default_rng(seed)
    width = sum(sets)
    n_shared = int(shared_fraction * width)
    latent = rng.standard_t(df=3, size=(tokens, n_shared)) * (rng.random((tokens, n_shared)) < 0.3)
    acts, truth = {}, {}
    for k in range(models):
        x = rng.standard_t(df=3, size=(tokens, width))  # independent heavy-tailed units
        slots = rng.permutation(width)[:n_shared]  # where this model keeps latent j
        x[:, slots] = latent + 0.35 * rng.standard_t(df=3, size=(tokens, n_shared))
        x = x * rng.uniform(0.1, 10, width) + rng.uniform(-50, 50, width)
        name = f"model{k}"
        edges = np.cumsum((0,) + sets)
        acts[name] = {f"blocks.{i}.mlp.hook_post": torch.tensor(x[:, edges[i]:edges[i + 1]], dtype=torch.float32)
                      for i in range(len(sets))}
        truth[name] = {int(slot): j for j, slot in enumerate(slots)}  # concatenated unit -> latent
    return acts, truth, np.cumsum((0,) + sets)


def test_planted_universal_units_are_recovered_with_their_partners():
    acts, truth, edges = _planted()
    batches = [{m: {s: x[i:i + 2048] for s, x in sets.items()} for m, sets in acts.items()}
               for i in range(0, 20_000, 2048)]
    result = compare_activations(batches, rotations=2)
    units = result.units
    set_start = {f"blocks.{i}.mlp.hook_post": edges[i] for i in range(len(edges) - 1)}
    flat = units["unit"].to_numpy() + units["unit_set"].map(set_start).to_numpy()
    planted = np.array([f in truth[m] for m, f in zip(units["model"], flat)])
    found = units["universal"].to_numpy()
    precision = (found & planted).sum() / found.sum()
    recall = (found & planted).sum() / planted.sum()
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    # partners: each planted unit's best match in every other model carries the same latent
    pairs = result.pairs
    pair_flat = pairs["unit"].to_numpy() + pairs["unit_set"].map(set_start).to_numpy()
    partner_flat = pairs["partner_unit"].to_numpy() + pairs["partner_unit_set"].map(set_start).to_numpy()
    checked = 0
    for m, u, other, p in zip(pairs["model"], pair_flat, pairs["other_model"], partner_flat):
        if u in truth[m]:
            assert truth[other].get(int(p)) == truth[m][u]
            checked += 1
    assert checked == 2 * sum(len(t) for t in truth.values()) / 1


def test_dead_units_are_nan_and_flagged_never_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 4, generator=g)
    a = x.clone()
    a[:, 1] = 0.0  # a ReLU that never fires
    a[:, 2] = 1e3  # a constant with an offset
    result = compare_activations([{"a": a, "b": x}])
    units = result.units.set_index(["model", "unit"])
    assert units.loc[("a", 1), "dead"] and units.loc[("a", 2), "dead"]
    assert not units.loc[("a", 0), "dead"] and not units.loc[("b", 1), "dead"]
    assert np.isnan(units.loc[("a", 1), "excess_corr"]) and not units.loc[("a", 1), "universal"]
    corr = result.correlation("a", "b")
    assert torch.isnan(corr[[1, 2]]).all() and not torch.isnan(corr[[0, 3]]).any()
    # b's partner search skips a's dead units instead of treating them as correlation 0
    assert (result.pairs.query("model == 'b'")["partner_unit"] != 1).all()


def test_comparison_tables_have_the_documented_columns_and_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g)
    result = compare_activations([{"a": x, "b": x.flip(1) + 0.1 * torch.randn(500, 6, generator=g)}])
    assert list(result.units.columns) == ["model", "unit_set", "unit", "mean_max_corr", "mean_baseline",
                                          "excess_corr", "universal", "dead"]
    assert list(result.pairs.columns) == ["model", "unit_set", "unit", "other_model", "max_corr",
                                          "partner_unit_set", "partner_unit", "baseline_max_corr"]
    assert result.pairs.query("model == 'a'")["partner_unit"].tolist() == [5, 4, 3, 2, 1, 0]
    assert result.correlation("a", "b").shape == (6, 6)
    result.save(tmp_path / "cmp")
    loaded = universality.Comparison.load(tmp_path / "cmp")
    pd.testing.assert_frame_equal(loaded.units, result.units)
    pd.testing.assert_frame_equal(loaded.pairs, result.pairs)
    torch.testing.assert_close(loaded.correlation("b", "a"), result.correlation("b", "a"))


@pytest.mark.parametrize("batches, message", [
    ([{"a": torch.zeros(5, 2), "b": torch.zeros(4, 2)}], "tokens"),
    ([{"a": torch.tensor([[1.0], [float("nan")]]), "b": torch.ones(2, 1)}], "NaN or inf"),
    ([{"a": torch.tensor([[1.0], [float("inf")]]), "b": torch.ones(2, 1)}], "NaN or inf"),
    ([], "empty"),
    ([{"a": {"s": torch.ones(3, 2), "t": torch.ones(3, 1)}, "b": {"s": torch.ones(3, 2)}}], "'t' is missing"),
    ([{"a": torch.randn(3, 2), "b": torch.randn(3, 2), "c": torch.randn(3, 2)},
      {"a": torch.randn(3, 2), "b": torch.randn(3, 2)}], "missing ['c']"),
    ([{"a": torch.randn(3, 2, 2), "b": torch.randn(3, 2)}], "Tensor[tokens, units]"),
])
def test_bad_input_gets_one_clear_line(batches, message):
    with pytest.raises(UniversalityError) as error:
        compare_activations(batches)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5, float("nan")])
def test_threshold_outside_unit_interval_is_refused_before_reading_data(threshold):
    def never():
        raise AssertionError("the stream was read")
        yield
    with pytest.raises(UniversalityError, match="threshold"):
        compare_activations(never(), threshold=threshold)


def test_a_finished_comparison_holds_no_batch_buffer_and_correlation_is_unchanged():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 6, generator=g)
    result = compare_activations([{"a": x[:250], "b": 2 * x[:250, [1, 0, 2, 3, 4, 5]] + 1},
                                  {"a": x[250:], "b": 2 * x[250:, [1, 0, 2, 3, 4, 5]] + 1}])
    assert result.moments._scratch is None  # freed at the end of the stream
    corr = result.correlation("a", "b")
    assert corr.dtype == torch.float64
    assert torch.allclose(corr[[0, 1], [1, 0]], torch.ones(2, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("passes", [1, 2])
def test_the_peeked_first_batch_is_not_held_while_later_batches_stream(monkeypatch, passes):
    """compare_activations peeks at batch 0 for the layout: neither that batch nor its checked copy is
    held once later batches stream (each pinned a batch of memory through the passes: 0.12 of the
    budget in benchmarks/bench_scale.py)."""
    import gc
    import weakref

    import universality.compare._activations as activations
    held, alive = [], []

    def peeked(batch):
        models, tokens = first_batch(batch)
        held.extend(weakref.ref(x) for sets in (*batch.values(), *models.values()) for x in sets.values())
        return models, tokens
    first_batch = activations.first_batch
    monkeypatch.setattr(activations, "first_batch", peeked)

    def batches():
        g = torch.Generator().manual_seed(0)
        for i in range(4):
            if i == 3:  # batch 2 is still in the stream's hands, batches 0 and 1 are done
                gc.collect()
                alive.append(sum(ref() is not None for ref in held))
            yield {m: {s: torch.randn(50, 10, generator=g) for s in ("s", "t")} for m in ("a", "b")}
    layout = {m: {"s": 10, "t": 10} for m in ("a", "b")}
    budget = None if passes == 1 else budget_for(layout, passes, batch_tokens=50, rotations=1)
    result = compare_activations(batches, memory_budget=budget)
    assert len(result.plan.passes) == passes and len(held) == 8
    assert set(alive) == {0}
