"""The neurons table joins every source table row by row: each (model, unit_set, unit) of the units table
exactly once, every joined column equal to its source's value for that key, moments against float64."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from universality import UniversalityError
from universality.neurons import (
    FamilyAccumulator, entropy_neuron_scores, neuron_table, position_buckets, prediction_neurons, row_context,
    unigram, weight_statistics,
)
from universality.neurons import _neuron_table

KEYS = ["model", "unit_set", "unit"]
MODELS, LAYERS, D_MODEL, D_MLP, VOCAB = ["a", "b"], 2, 6, 5, 12
FEATURES = [unigram(size=VOCAB), position_buckets([0, 3, 6])]


def _weights(seed: int, null_space: bool = True) -> dict[str, torch.Tensor]:
    """TransformerLens-named weights; W_U has rank D_MODEL - 2 when `null_space` (an entropy null space)."""
    g = torch.Generator().manual_seed(seed)
    w = {"W_E": torch.randn(VOCAB, D_MODEL, generator=g), "W_U": torch.randn(D_MODEL, VOCAB, generator=g)}
    if null_space:
        w["W_U"][-2:] = 0.0
    for layer in range(LAYERS):
        w[f"blocks.{layer}.mlp.W_in"] = torch.randn(D_MODEL, D_MLP, generator=g)
        w[f"blocks.{layer}.mlp.b_in"] = torch.randn(D_MLP, generator=g)
        w[f"blocks.{layer}.mlp.W_out"] = torch.randn(D_MLP, D_MODEL, generator=g)
    return w


def _stream(batches: int = 3, rows: int = 4, pos: int = 8):
    """[(batch, context)] with hook_pre / hook_post [tokens, units] per layer and model, seeded."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(batches):
        tokens = torch.randint(0, VOCAB, (rows, pos), generator=g)
        batch = {}
        for model in MODELS:
            batch[model] = {}
            for layer in range(LAYERS):
                pre = 2 * torch.randn(rows * pos, D_MLP, generator=g) + torch.arange(D_MLP) - 2
                batch[model][f"blocks.{layer}.mlp.hook_pre"] = pre
                batch[model][f"blocks.{layer}.mlp.hook_post"] = torch.relu(pre)
        out.append((batch, row_context(tokens)))
    return out


def _units(seed: int = 2) -> pd.DataFrame:
    """A units table (as a Comparison gives) in shuffled row order, with distinct values per row."""
    keys = pd.DataFrame([(m, f"blocks.{l}.mlp.hook_post", u) for m in MODELS for l in range(LAYERS)
                         for u in range(D_MLP)], columns=KEYS)
    rng = np.random.default_rng(seed)
    keys["mean_max_corr"] = rng.random(len(keys))
    keys["mean_baseline"] = rng.random(len(keys)) / 2
    keys["excess_corr"] = keys.mean_max_corr - keys.mean_baseline
    keys["universal"] = keys.excess_corr > 0.5
    keys["dead"] = False
    return keys.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _joined(table: pd.DataFrame, source: pd.DataFrame, columns) -> pd.DataFrame:
    """table's and source's `columns` side by side for every key of table (source rows must be unique)."""
    assert not source.duplicated(KEYS).any()
    return table[KEYS + list(columns)].merge(source[KEYS + list(columns)], on=KEYS, how="left",
                                             suffixes=("", "_source"), validate="one_to_one")


def _assert_same(joined: pd.DataFrame, columns) -> None:
    for column in columns:
        got, expected = joined[column], joined[f"{column}_source"]
        if pd.api.types.is_numeric_dtype(expected) and not pd.api.types.is_bool_dtype(expected):
            assert np.allclose(got.astype(float), expected.astype(float), rtol=1e-12, atol=0, equal_nan=True), column
        else:
            assert (got.fillna("<none>").astype(str) == expected.fillna("<none>").astype(str)).all(), column


@pytest.fixture(scope="module")
def built():
    torch.set_num_threads(1)
    units, weights = _units(), {m: _weights(seed) for seed, m in enumerate(MODELS)}
    return _neuron_table.neuron_table(_stream(), units=units, feature_sets=FEATURES, weights=weights), units, weights


def test_every_unit_appears_exactly_once(built):
    table, units, _ = built
    assert len(table) == len(units) == len(MODELS) * LAYERS * D_MLP
    assert not table.duplicated(KEYS).any()
    assert set(map(tuple, table[KEYS].values)) == set(map(tuple, units[KEYS].values))


def test_universality_columns_are_the_units_tables_own_row(built):
    table, units, _ = built
    columns = ["mean_max_corr", "mean_baseline", "excess_corr", "universal", "dead"]
    _assert_same(_joined(table, units, columns), columns)


def test_moments_match_a_float64_pass_over_each_units_activations(built):
    table, _, _ = built
    stream = _stream()
    for model in MODELS:
        for layer in range(LAYERS):
            rows = table[(table.model == model) & (table.unit_set == f"blocks.{layer}.mlp.hook_post")].sort_values("unit")
            for kind in ("pre", "post"):
                x = torch.cat([b[model][f"blocks.{layer}.mlp.hook_{kind}"] for b, _ in stream]).double().numpy()
                assert np.allclose(rows[f"{kind}_mean"], x.mean(axis=0), rtol=1e-10)
                assert np.allclose(rows[f"{kind}_var"], x.var(axis=0), rtol=1e-10)
                assert np.allclose(rows[f"{kind}_skew"], stats.skew(x, axis=0), rtol=1e-8)
                assert np.allclose(rows[f"{kind}_kurtosis"], stats.kurtosis(x, axis=0, fisher=False), rtol=1e-8)
                assert np.allclose(rows[f"{kind}_freq"], (x > 0).mean(axis=0))


def test_family_columns_are_each_units_accumulator_row(built):
    table, _, _ = built
    frames = []
    for model in MODELS:
        for layer in range(LAYERS):
            name = f"blocks.{layer}.mlp.hook_post"
            acc = FamilyAccumulator(FEATURES, D_MLP, min_count=10)
            for batch, context in _stream():
                acc.update(batch[model][name], **context)
            frames.append(acc.table().assign(model=model, unit_set=name))
    source = pd.concat(frames, ignore_index=True)
    columns = ["best_feature_set", "best_feature", "variance_reduction", "vr_unigram", "vr_position"]
    assert set(columns) <= set(table.columns) and table.variance_reduction.notna().all()
    _assert_same(_joined(table, source, columns), columns)


def test_weight_and_role_columns_are_each_models_own(built):
    table, _, weights = built
    frames = []
    for model, w in weights.items():
        roles = prediction_neurons(w)[["unit_set", "unit", "role"]].merge(
            entropy_neuron_scores(w)[["unit_set", "unit", "null_share"]], on=["unit_set", "unit"])
        frames.append(weight_statistics(w).merge(roles, on=["unit_set", "unit"]).assign(model=model))
    source = pd.concat(frames, ignore_index=True)
    columns = ["w_in_norm", "w_out_norm", "b_in", "cos_in_out", "vocab_kurtosis", "embed_skew", "role", "null_share"]
    assert table.null_share.notna().all() and table.w_out_norm.nunique() == len(table)
    _assert_same(_joined(table, source, columns), columns)


def test_a_full_rank_unembedding_gives_nan_null_share_and_nothing_else_changes():
    units = _units()
    weights = {m: _weights(seed, null_space=False) for seed, m in enumerate(MODELS)}
    table = _neuron_table.neuron_table(_stream(batches=1), units=units, feature_sets=FEATURES, weights=weights)
    assert len(table) == len(units) and table.null_share.isna().all() and table.w_out_norm.notna().all()
    with pytest.raises(UniversalityError, match="no singular value"):
        entropy_neuron_scores(weights["a"])  # the default still says why


def test_a_real_shape_error_in_the_null_space_step_propagates(monkeypatch):
    def broken(weights, **options):
        raise UniversalityError("blocks.1.mlp.W_out has shape [5, 7]; expected [any, 6]")

    monkeypatch.setattr(_neuron_table, "entropy_neuron_scores", broken)
    with pytest.raises(UniversalityError, match="has shape"):
        _neuron_table.neuron_table(_stream(batches=1), units=_units(), feature_sets=FEATURES,
                                   weights={m: _weights(seed) for seed, m in enumerate(MODELS)})


def test_families_of_a_unit_subset_equal_the_full_tables_and_the_rest_are_marked_unmeasured(built):
    table, units, _ = built
    kept = {(m, f"blocks.{l}.mlp.hook_post"): torch.tensor([0, 3]) if l == 0 else torch.tensor([4])
            for m in MODELS for l in range(LAYERS)}
    subset = _neuron_table.neuron_table(_stream(), units=units, feature_sets=FEATURES, family_units=kept)
    measured = subset[subset.family_measured]
    assert sorted(measured.unit.tolist()) == sorted([0, 3] * len(MODELS) + [4] * len(MODELS))
    columns = ["best_feature_set", "best_feature", "variance_reduction", "vr_unigram", "vr_position"]
    _assert_same(_joined(measured, table, columns), columns)
    assert subset[~subset.family_measured][columns].isna().all().all()
    assert table.family_measured.all()


def test_family_summary_scales_a_sample_of_non_universal_neurons_back_to_their_number(built):
    table = built[0].copy()
    table["universal"] = np.arange(len(table)) % 5 == 0
    full = _neuron_table.family_summary(table).set_index("family")
    others = np.flatnonzero(~table.universal.to_numpy())
    sampled = table.copy()
    sampled["family_measured"] = table.universal.to_numpy()
    sampled.loc[others[::2], "family_measured"] = True  # half of the others
    sampled.loc[~sampled.family_measured, ["best_feature_set", "best_feature"]] = None
    estimate = _neuron_table.family_summary(sampled).set_index("family")
    weight = len(others) / len(others[::2])
    families = table.best_feature_set.fillna("(none)")
    universal = families[table.universal].value_counts()
    sample = families.iloc[others[::2]].value_counts()
    expected = universal.add(weight * sample, fill_value=0).round().astype(int)
    assert (estimate.neurons.sort_index() == expected.sort_index()).all()
    assert (estimate.universal == full.universal.reindex(estimate.index)).all()


def test_family_units_keep_every_universal_unit_and_a_seeded_sample_when_the_sums_exceed_half_the_budget():
    from universality.pipeline._neurons import family_units
    units = _units()
    units.loc[3, "dead"] = True
    per_unit = 1000
    assert family_units(units, per_unit, None, 0) == (None, None)
    assert family_units(units, per_unit, 2 * per_unit * len(units), 0) == (None, None)
    universal = int((units.universal & ~units.dead).sum())
    capacity = universal + 3
    kept, note = family_units(units, per_unit, 2 * per_unit * capacity, 0)
    picked = pd.concat([pd.DataFrame({"model": m, "unit_set": s, "unit": v.numpy()}) for (m, s), v in kept.items()])
    flagged = picked.merge(units, on=KEYS)
    assert len(picked) == capacity and not flagged.dead.any()
    assert flagged.universal.sum() == universal and note.startswith(f"families measured for all {universal} universal")
    again, _ = family_units(units, per_unit, 2 * per_unit * capacity, 0)
    assert all(torch.equal(kept[k], again[k]) for k in kept) and kept.keys() == again.keys()
    assert universal >= 2
    few, note = family_units(units, per_unit, 2 * per_unit * (universal - 1), 0)
    assert sum(len(v) for v in few.values()) == universal - 1 and "the family base rates are left out" in note
