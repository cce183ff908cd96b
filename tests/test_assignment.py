"""One-to-one assignment (issue 10 part 2): the Hungarian blocks equal a brute force over every
permutation, a permuted copy is recovered exactly, near-duplicates claim one partner but only one
is assigned to it, planted universal features come back as components, and bad input is one line."""

import itertools

import numpy as np
import pytest
import torch

from tests._planned import budget_for
from universality import UniversalityError
from universality.compare import assign_partners, compare_activations, compare_moments, universal_features
from universality.compare._assignment import one_to_one
from universality.moments import MomentAccumulator
from universality.pipeline import RunRecord
from universality.pipeline._features import feature_step

TOKENS = 3000


def _brute_force(corr: np.ndarray) -> float:
    """The largest summed r of a matching of every live unit of the narrower side (dead: NaN row or column)."""
    live = corr[np.isfinite(corr).any(axis=1)][:, np.isfinite(corr).any(axis=0)]
    if live.shape[0] > live.shape[1]:
        live = live.T
    return max(live[np.arange(live.shape[0]), list(columns)].sum()
               for columns in itertools.permutations(range(live.shape[1]), live.shape[0]))


def _check(corr, i, j, r):
    assert len(set(i)) == len(i) and len(set(j)) == len(j)  # one-to-one
    assert np.isfinite(corr[i]).any() if len(i) else True
    np.testing.assert_allclose(r, corr[i, j])
    np.testing.assert_allclose(r.sum(), _brute_force(corr), atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (5, 5), (6, 6), (4, 6), (6, 3)])
def test_dense_and_sparse_assignments_equal_a_brute_force_over_every_permutation(shape):
    rng = np.random.default_rng(sum(shape))
    for trial in range(5):
        corr = rng.uniform(-1, 1, shape)
        if trial % 2 and min(shape) > 2:
            corr[rng.integers(shape[0])] = np.nan  # a dead unit of model a
            corr[:, rng.integers(shape[1])] = np.nan  # ... and of model b
        for dense_limit in (100, 1):  # dense Hungarian; sparse with every edge a candidate
            i, j, r = one_to_one(lambda rows: corr[rows], *shape, dense_limit=dense_limit, candidates=max(shape))
            _check(corr, i, j, r)
            dead = ~np.isfinite(corr).any(axis=1)
            assert not dead[i].any()
            assert len(i) == min((~dead).sum(), np.isfinite(corr).any(axis=0).sum())


def test_sparse_assignment_without_a_full_matching_on_its_candidates_says_so_in_one_line():
    corr = np.array([[0.90, 0.8, 0.8], [0.91, 0.1, 0.1], [0.92, 0.1, 0.1]])  # rows 1, 2 reach only column 0
    with pytest.raises(UniversalityError, match="no one-to-one assignment .* raise candidates") as error:
        one_to_one(lambda rows: corr[rows], 3, 3, dense_limit=1, candidates=1)
    assert "\n" not in str(error.value)
    _check(corr, *one_to_one(lambda rows: corr[rows], 3, 3, dense_limit=1, candidates=2))


def _noisy(x, g, scale=0.2):
    return x + scale * torch.randn(x.shape, generator=g)


def test_assignment_on_the_state_equals_a_brute_force_over_its_correlations():
    g = torch.Generator().manual_seed(3)
    latent = torch.randn(TOKENS, 3, generator=g)
    a = latent @ torch.randn(3, 6, generator=g) + torch.randn(TOKENS, 6, generator=g)
    b = latent @ torch.randn(3, 6, generator=g) + torch.randn(TOKENS, 6, generator=g)
    comparison = assign_partners(compare_activations([{"a": a, "b": b}]))
    corr = comparison.correlation("a", "b").numpy()
    rows = comparison.pairs.query("model == 'a'")
    assigned = rows["assigned_partner"].to_numpy()
    np.testing.assert_allclose(corr[np.arange(6), assigned].sum(), _brute_force(corr), atol=1e-12)
    np.testing.assert_allclose(rows["assigned_corr"], corr[np.arange(6), assigned])
    back = comparison.pairs.query("model == 'b'")["assigned_partner"].to_numpy()
    assert (back[assigned] == np.arange(6)).all()  # b's assignment is a's, inverted


def test_a_permuted_noisy_copy_is_recovered_exactly_per_unit_set_and_across_whole_models():
    g = torch.Generator().manual_seed(4)
    x = {"blocks.0.mlp.hook_post": torch.randn(TOKENS, 40, generator=g),
         "blocks.1.mlp.hook_post": torch.randn(TOKENS, 24, generator=g)}
    x["blocks.1.mlp.hook_post"][:, 5] = 1.0  # dead in every model
    perm = {s: torch.randperm(v.shape[1], generator=g) for s, v in x.items()}
    perm["blocks.1.mlp.hook_post"] = torch.cat([perm["blocks.1.mlp.hook_post"][perm["blocks.1.mlp.hook_post"] != 5],
                                                torch.tensor([5])])  # dead stays dead at the end
    b = {s: _noisy(v[:, perm[s]], g) for s, v in x.items()}
    b["blocks.1.mlp.hook_post"][:, -1] = 2.0
    batch = {"a": x, "b": b, "c": {"all": torch.cat(list(b.values()), dim=1)}}  # c: matched across whole models
    acc = MomentAccumulator({m: {s: v.shape[1] for s, v in sets.items()} for m, sets in batch.items()}, dtype="float64")
    comparison = assign_partners(compare_moments(acc.update(batch)))
    pairs = comparison.pairs.set_index(["model", "other_model", "unit_set", "unit"]).sort_index()
    for s, p in perm.items():
        expected = np.argsort(p.numpy())  # a's unit i is b's unit expected[i]
        rows = pairs.loc[("a", "b", s)]
        live = rows.index != 5 if s == "blocks.1.mlp.hook_post" else slice(None)
        assert (rows["assigned_partner"].to_numpy()[live] == expected[live]).all()
        assert (rows["assigned_partner_unit_set"].to_numpy()[live] == s).all()
        offset = 0 if s == "blocks.0.mlp.hook_post" else 40
        across = pairs.loc[("a", "c", s)]
        assert (across["assigned_partner"].to_numpy()[live] == expected[live] + offset).all()
    dead = pairs.loc[("a", "b", "blocks.1.mlp.hook_post", 5)]
    assert dead["assigned_partner"] == -1 and dead["assigned_partner_unit_set"] == ""
    assert np.isnan(dead["assigned_corr"]) and pairs.loc[("c", "b", "all", 63)]["assigned_partner"] == -1  # c's dead


@pytest.fixture(scope="module")
def redundant():
    """64 units per model. Model a: units 0-3 are noisy copies of b's unit 0, units 4..63 copies of b's
    1..60 (b's 61-63 have no twin in a: at threshold 0.2 features of two models); c is a noisy copy of b."""
    g = torch.Generator().manual_seed(5)
    b = torch.randn(TOKENS, 64, generator=g)
    a = torch.cat([_noisy(b[:, [0, 0, 0, 0]], g, 0.3), _noisy(b[:, 1:61], g)], dim=1)
    c = _noisy(b, g)
    comparison = assign_partners(compare_activations([{"a": a, "b": b, "c": c}], rotations=2, threshold=0.2))
    return comparison, universal_features(comparison)


def test_near_duplicates_claim_one_partner_and_only_one_is_assigned_to_it(redundant):
    comparison, _ = redundant
    pairs = comparison.pairs.query("model == 'a' and other_model == 'b'").set_index("unit")
    copies = pairs.loc[[0, 1, 2, 3]]
    assert (copies["partner_unit"] == 0).all() and (copies["partner_claimed_by"] == 4).all()
    assert (copies["assigned_partner"] == 0).sum() == 1
    assert (pairs.loc[4:, "partner_claimed_by"] == 1).all()
    assert (pairs.loc[4:, "assigned_partner"].to_numpy() == np.arange(1, 61)).all()
    unclaimed = comparison.pairs.query("model == 'b' and other_model == 'a'")
    assert (unclaimed["partner_claimed_by"] >= 1).all()  # every b unit has some best partner in a


def test_planted_features_are_the_components_of_the_best_partner_graph(redundant):
    comparison, (units, features) = redundant
    assert len(features) == 64 and features["feature"].tolist() == list(range(64))
    assert features["models"].tolist() == [3] * 61 + [2] * 3  # widest reach first, then mean_corr
    for _, same in features.groupby("models"):
        assert same["mean_corr"].is_monotonic_decreasing
    first = features.set_index("members_b").loc["units#0"]  # the four copies and their partners in b and c
    assert first["size"] == 6 and first["models"] == 3
    assert set(first["members_a"].split()) == {f"units#{i}" for i in range(4)} and first["members_c"] == "units#0"
    for j in range(1, 61):
        row = features.set_index("members_b").loc[f"units#{j}"]
        assert (row["members_a"], row["members_c"], row["size"]) == (f"units#{j + 3}", f"units#{j}", 3)
    corr_ab, corr_ac = comparison.correlation("a", "b").numpy(), comparison.correlation("a", "c").numpy()
    corr_bc = comparison.correlation("b", "c").numpy()
    reference = np.mean([*corr_ab[:4, 0], *corr_ac[:4, 0], corr_bc[0, 0]])
    np.testing.assert_allclose(first["mean_corr"], reference)
    a_units = units.query("model == 'a'")
    assert a_units["feature"].nunique() == 61 and (units["feature"] >= 0).all()
    for j in (61, 62, 63):
        row = features.set_index("members_b").loc[f"units#{j}"]
        assert (row["members_a"], row["members_c"], row["models"]) == ("", f"units#{j}", 2)
    by_feature = units.groupby("feature").size()
    assert by_feature.loc[first["feature"]] == 6


def test_the_rule_chooses_which_units_make_edges():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(TOKENS, 32, generator=g)
    comparison = compare_activations([{"a": x, "b": _noisy(x.flip(1), g)}], rotations=4).calibrate(rotations=4)
    assert len(universal_features(comparison, rule="universal")[1]) == 32
    comparison.units = comparison.units.assign(calibrated_universal=False)
    for rule in ("auto", "calibrated"):
        units, features = universal_features(comparison, rule=rule)
        assert len(features) == 0 and (units["feature"] == -1).all()
        assert list(features.columns) == ["feature", "size", "models", "mean_corr", "members_a", "members_b"]


@pytest.fixture(scope="module")
def three():
    """Three independent 8-unit models in one pass and in a plan of several passes."""
    g = torch.Generator().manual_seed(7)
    acts = {m: {"s": torch.randn(1000, 8, generator=g)} for m in "abc"}
    batches = [{m: {s: x[i:i + 500] for s, x in sets.items()} for m, sets in acts.items()} for i in (0, 500)]
    planned = compare_activations(lambda: iter(batches), rotations=2,
                                  memory_budget=budget_for({m: {"s": 8} for m in acts}, 3))
    assert len(planned.plan.passes) > 1
    return compare_activations(batches), planned


def test_the_features_step_leaves_a_multi_pass_run_a_note_and_no_tables(tmp_path, three):
    record = feature_step(tmp_path, RunRecord(three[1], {}, {}))
    assert record.tables == {} and len(record.notes) == 1 and "left out" in record.notes[0]
    assert not (tmp_path / "tables").exists()


def test_bad_input_is_one_line(three):
    one_pass, planned = three
    calls = [(lambda: assign_partners(planned), "cross-moments"),
             (lambda: universal_features(planned), "cross-moments"),
             (lambda: universal_features(one_pass, rule="best"), "unknown feature rule 'best'; choose one of"),
             (lambda: universal_features(one_pass, rule="calibrated"), "call comparison.calibrate"),
             (lambda: assign_partners(one_pass, candidates=0), "candidates must be an integer >= 1")]
    for call, message in calls:
        with pytest.raises(UniversalityError, match=message) as error:
            call()
        assert "\n" not in str(error.value)
