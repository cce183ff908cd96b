"""Irrep metrics of group-composition models: planted ground truth, invariances, float64 references."""

import numpy as np
import pandas as pd
import pytest
import torch

from universality.irreps import (coset_constancy, excluded_loss, fourier_key_frequencies, fraction_logits_explained,
                                 fraction_variance_explained, hidden_fve, irrep_emergence, logit_similarity,
                                 restricted_loss, subgroups_of_interest, unit_irreps)
from universality.irreps._cosets import check_subgroup
from universality.irreps._loss import model_loss
from universality.errors import UniversalityError
from universality.groups import irrep_matrices, make_group, projector, real_irreps

S4 = make_group("S4")
STANDARD, SIGN, TWO_TWO = "(3,1)", "(1,1,1,1)", "(2,2)"


def _irrep(group, label):
    return next(r for r in real_irreps(group) if r.label == label)


def _characters(group, label):
    """[pairs, n]: chi(a b c^-1) for pair a * n + b and output c."""
    chi = _irrep(group, label).character
    return chi[group.table[group.table.ravel()][:, group.inverse]]


def _entries(group, label, of="ab"):
    """[pairs, d^2]: the matrix entries rho(x)_ij of a real irrep as functions of x = a, b or ab on every pair."""
    n = group.order
    rho = irrep_matrices(group, label).reshape(n, -1)  # [n, d^2]
    a, b = np.divmod(np.arange(n * n), n)
    return rho[{"a": a, "b": b, "ab": group.table.ravel()}[of]]


def _fve(table, label):
    return dict(zip(table.irrep, table.fve))[label]


# (1) fraction of variance explained of embeddings ------------------------------------------------------------

@pytest.mark.parametrize("name, label", [("S4", STANDARD), ("S4", TWO_TWO), ("S4", SIGN), ("D5", "chi3"),
                                         ("A4", "chi3")])
def test_fve_of_irrep_matrix_entries_is_one_for_that_irrep_only(name, label):
    group = make_group(name)
    embedding = irrep_matrices(group, label).reshape(group.order, -1)  # [n, d^2]: columns in rho's block
    embedding = embedding @ np.random.default_rng(0).standard_normal((embedding.shape[1], 7))  # mix columns
    table = fraction_variance_explained(group, embedding)
    assert np.isclose(_fve(table, label), 1.0, atol=1e-10)
    assert np.allclose(table.fve[table.irrep != label], 0.0, atol=1e-10)


@pytest.mark.parametrize("name", ["S4", "A4"])
def test_fve_of_random_embedding_is_rank_over_order(name):
    group = make_group(name)
    embedding = torch.randn(group.order, 4000, generator=torch.Generator().manual_seed(0))
    table = fraction_variance_explained(group, embedding)
    for irrep, fve, chance in zip(real_irreps(group), table.fve, table.chance):
        expected = (irrep.dim**2 if irrep.indicator == 1 else irrep.dim**2 / 2) / group.order  # 2 d^2 for a pair
        assert chance == pytest.approx(expected)
        assert fve == pytest.approx(expected, rel=0.1)
    assert table.fve.sum() == pytest.approx(1.0)


def test_fve_axis_one_is_the_transpose():
    matrix = np.random.default_rng(1).standard_normal((24, 5))
    pd.testing.assert_frame_equal(fraction_variance_explained(S4, matrix),
                                  fraction_variance_explained(S4, matrix.T, axis=1))
    with pytest.raises(UniversalityError, match="expected \\[order=24, columns\\]"):
        fraction_variance_explained(S4, matrix[:20])


# (2) logit similarity -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["S4", "A4", "C5"])
def test_character_logits_have_similarity_one_with_their_irrep_only(name):
    group = make_group(name)
    for irrep in real_irreps(group)[1:]:
        table = logit_similarity(group, _characters(group, irrep.label))
        expected = (table.irrep == irrep.label).astype(float)
        assert np.allclose(table.similarity, expected, atol=1e-12)
        assert table.key.tolist() == (table.irrep == irrep.label).tolist()


def test_mixed_logits_recover_planted_weights_and_ignore_per_pair_shifts():
    t1, t2 = _characters(S4, STANDARD), _characters(S4, SIGN)
    shift = np.random.default_rng(2).standard_normal((576, 1))  # softmax ignores it
    logits = 0.6 * t1 / np.linalg.norm(t1) + 0.8 * t2 / np.linalg.norm(t2) + shift
    table = logit_similarity(S4, logits)
    similarity = dict(zip(table.irrep, table.similarity))
    assert similarity[STANDARD] == pytest.approx(0.6) and similarity[SIGN] == pytest.approx(0.8)
    assert fraction_logits_explained(table) == pytest.approx(1.0)
    noisy = logits + 0.01 * np.random.default_rng(3).standard_normal(logits.shape)
    assert fraction_logits_explained(logit_similarity(S4, noisy)) < 0.999


def test_logit_similarity_matches_dense_float64_reference():
    group = make_group("D5")
    logits = torch.randn(100, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    centred = logits.double().numpy() - logits.double().numpy().mean(axis=1, keepdims=True)
    reference = [np.sum(centred * t) / np.linalg.norm(centred) / np.linalg.norm(t)
                 for t in (_characters(group, r.label) for r in real_irreps(group))]
    assert np.allclose(logit_similarity(group, logits).similarity, reference, atol=1e-12)


# (3) hidden-layer FVE -------------------------------------------------------------------------------------

def test_hidden_fve_puts_planted_shares_in_their_irrep_and_term():
    # energy over the pairs of rho(x)_ij entries summed over ij: n^2 d (rows of an orthogonal matrix)
    hidden = np.hstack([2.0 * _entries(S4, STANDARD, "ab"),  # 4 * 576 * 3
                        1.0 * _entries(S4, SIGN, "ab"),  # 1 * 576
                        3.0 * _entries(S4, TWO_TWO, "a")])  # 9 * 576 * 2
    hidden = hidden + 5.0  # a constant per unit: the centring removes it
    table = hidden_fve(S4, hidden)
    total = 12 + 1 + 18
    planted = {(STANDARD, "ab"): 12 / total, (SIGN, "ab"): 1 / total, (TWO_TWO, "a"): 18 / total}
    for irrep, term, fve in zip(table.irrep, table.term, table.fve):
        assert fve == pytest.approx(planted.get((irrep, term), 0.0), abs=1e-10), (irrep, term)


def test_hidden_fve_counts_products_of_a_and_b_as_remainder():
    product = _entries(S4, STANDARD, "a")[:, :1] * _entries(S4, TWO_TWO, "b")[:, :1]  # (rho, sigma) block
    hidden = np.hstack([_entries(S4, SIGN, "b"), product * np.sqrt(24)])
    table = hidden_fve(S4, hidden).set_index(["irrep", "term"]).fve
    assert table[(SIGN, "b")] + table[("-", "remainder")] == pytest.approx(1.0)
    assert table[("-", "remainder")] > 0.3


def test_hidden_fve_matches_dense_projectors_on_random_activations():
    group = make_group("S3")
    n = group.order
    hidden = np.random.default_rng(5).standard_normal((n * n, 4))
    centred = hidden - hidden.mean(axis=0)
    a, b = np.divmod(np.arange(n * n), n)
    ab = group.table.ravel()
    table = hidden_fve(group, hidden).set_index(["irrep", "term"]).fve
    for irrep in real_irreps(group)[1:]:
        p = projector(group, irrep)
        dense = {"a": p[a][:, a] / n, "b": p[b][:, b] / n, "ab": p[ab][:, ab] / n}  # [pairs, pairs] projectors
        for term, proj in dense.items():
            assert np.allclose(proj @ proj, proj)
            expected = np.sum((proj @ centred) ** 2) / np.sum(centred**2)
            assert table[(irrep.label, term)] == pytest.approx(expected, abs=1e-12)
    assert 0 <= table[("-", "remainder")] <= 1


# (4) restricted and excluded loss ----------------------------------------------------------------------------

def _perfect_model(scale=10.0):
    """hidden: rho(ab) entries of the standard and sign irreps, plus an a-only distractor read by nothing;
    unembed so that logits = scale * (chi_std + chi_sign)(a b c^-1)."""
    std_ab, sign_ab, distractor = _entries(S4, STANDARD), _entries(S4, SIGN), _entries(S4, TWO_TWO, "a")
    hidden = np.hstack([std_ab, sign_ab, distractor + 1.0])  # the distractor has a mean, as after a ReLU
    rho_c = np.hstack([irrep_matrices(S4, STANDARD).reshape(24, -1), irrep_matrices(S4, SIGN).reshape(24, -1)])
    unembed = scale * np.hstack([rho_c, np.zeros((24, 4))])  # [outputs, units]
    target = S4.table.ravel()
    return hidden, unembed, target


def test_restricted_loss_of_a_perfect_model_equals_its_loss_and_excluded_loss_rises():
    hidden, unembed, target = _perfect_model()
    train = np.random.default_rng(6).random(576) < 0.5
    full = model_loss(hidden @ unembed.T, target)
    keys = [STANDARD, SIGN]
    assert full < 1e-6
    assert restricted_loss(S4, hidden, unembed, target, keys) == pytest.approx(full, rel=1e-6, abs=1e-12)
    assert excluded_loss(S4, hidden, unembed, target, keys, train) == pytest.approx(np.log(24))
    assert restricted_loss(S4, hidden, unembed, target, [TWO_TWO]) == pytest.approx(np.log(24))
    only_std = restricted_loss(S4, hidden, unembed, target, [STANDARD])
    assert full < only_std < np.log(24)


def test_model_loss_matches_torch_float64_cross_entropy():
    generator = torch.Generator().manual_seed(7)
    logits = 30 * torch.randn(50, 9, generator=generator)
    target = torch.randint(0, 9, (50,), generator=generator)
    mask = torch.arange(50) % 3 == 0
    expected = torch.nn.functional.cross_entropy(logits.double()[mask], target[mask]).item()
    assert model_loss(logits, target, mask) == pytest.approx(expected, rel=1e-12)


def test_loss_inputs_are_checked():
    hidden, unembed, target = _perfect_model()
    with pytest.raises(UniversalityError, match="no real irrep '\\(4,1\\)'; choose from: \\(4\\), \\(1,1,1,1\\)"):
        restricted_loss(S4, hidden, unembed, target, ["(4,1)"])
    with pytest.raises(UniversalityError, match="outputs are 0..23"):
        model_loss(hidden @ unembed.T, target + 1)
    with pytest.raises(UniversalityError, match="mask selects no pairs"):
        excluded_loss(S4, hidden, unembed, target, [SIGN], np.zeros(576, dtype=bool))


# (5) neuron irreps ------------------------------------------------------------------------------------------

def test_unit_irreps_finds_planted_units_and_flags_dead_ones():
    units = np.hstack([_entries(S4, STANDARD, "ab")[:, :1],  # 0: rho(ab) entry
                       _entries(S4, SIGN, "a"),  # 1: sign(a)
                       _entries(S4, TWO_TWO, "b")[:, 1:2],  # 2: rho(b) entry
                       _entries(S4, STANDARD, "a")[:, :1] * _entries(S4, STANDARD, "b")[:, 4:5],  # 3: (rho, rho) block
                       np.zeros((576, 1)),  # 4: never fires
                       np.full((576, 1), 5.0),  # 5: constant
                       _entries(S4, STANDARD, "ab")[:, :1] + _entries(S4, TWO_TWO, "ab")[:, :1]])  # 6: mixed
    table = unit_irreps(S4, np.maximum(units, 0) - np.maximum(-units, 0), threshold=0.7)
    assert table.irrep.tolist()[:4] == [STANDARD, SIGN, TWO_TWO, STANDARD]
    assert np.allclose(table.share[:4], 1.0)
    assert table.dead.tolist() == [False] * 4 + [True, True, False]
    assert table.irrep[4:].isna().all() and table.share[4:6].isna().all()
    assert 0.3 < table.share[6] < 0.7  # shares 0.4 and 0.6: neither reaches 0.7, so unassigned


# (6) Fourier frequencies of cyclic groups --------------------------------------------------------------------

@pytest.mark.parametrize("n", [7, 8])
def test_fourier_frequencies_agree_with_cyclic_irreps(n):
    matrix = np.random.default_rng(n).standard_normal((n, 5))
    fourier = fourier_key_frequencies(matrix, n)
    table = fraction_variance_explained(make_group(f"C{n}"), matrix)
    frequency = [int(label.split("+")[0][2:]) for label in table.irrep]  # "k=2+k=5" -> 2
    assert np.allclose(fourier.fve.to_numpy()[frequency], table.fve, atol=1e-12)
    assert fourier.fve.sum() == pytest.approx(1.0)


def test_fourier_key_frequencies_find_planted_frequencies():
    x = np.arange(113)[:, None]
    embedding = np.hstack([np.cos(2 * np.pi * 14 * x / 113), 2 * np.sin(2 * np.pi * 35 * x / 113)])
    assert fourier_key_frequencies(embedding, 113).query("key").frequency.tolist() == [14, 35]


# (7) coset constancy --------------------------------------------------------------------------------------

def test_units_constant_on_cosets_score_one_and_random_units_score_low():
    perms = S4.permutations  # [24, 4]
    stab = subgroups_of_interest(S4)["Stab(3)"]  # S3 inside S4
    a, b = np.divmod(np.arange(576), 24)
    values = np.array([1.0, -1.0, 3.0, 1.0])  # values[3] = mean of the rest: no variance between right cosets
    units = np.stack([values[perms[S4.table.ravel(), 3]],  # function of (ab)(3): the left coset (ab) Stab(3)
                      values[np.argsort(perms, axis=1)[a, 3]],  # a^-1(3): the right coset Stab(3) a
                      np.random.default_rng(9).standard_normal(576),
                      np.zeros(576)], axis=1)
    table = coset_constancy(S4, units, stab).set_index(["unit", "of", "side"]).constancy
    assert table[(0, "ab", "left")] == pytest.approx(1.0) and table[(0, "ab", "right")] < 1e-12
    assert table[(1, "a", "right")] == pytest.approx(1.0) and table[(1, "a", "left")] < 1e-12
    assert table[2].max() < 0.05
    assert table[3].isna().all()  # no variance: no verdict


def test_coset_constancy_rejects_non_subgroups():
    with pytest.raises(UniversalityError, match="is not a subgroup of S4: .* is missing"):
        coset_constancy(S4, np.zeros((576, 1)), [S4.identity, 1, 2])
    with pytest.raises(UniversalityError, match="element indices 0..23"):
        check_subgroup(S4, [0, 24])


def test_subgroups_of_interest_are_distinct_subgroups():
    found = subgroups_of_interest(S4)
    # 4 point stabilisers (S3), A4, 9 of order 2, 4 of order 3, 3 of order 4
    assert len(found) == 4 + 1 + 9 + 4 + 3
    assert len({tuple(members) for members in found.values()}) == len(found)
    assert all(len(check_subgroup(S4, members)) == len(members) for members in found.values())


# emergence -----------------------------------------------------------------------------------------------------

def test_irrep_emergence_orders_irreps_that_stay_key():
    std, sign, two = (_characters(S4, label) for label in (STANDARD, SIGN, TWO_TWO))
    noise = 1e-3 * np.random.default_rng(10).standard_normal(std.shape)
    checkpoints = [(300, noise + std + sign), (0, noise), (100, noise + std + two), (200, noise + std)]
    table = irrep_emergence(S4, checkpoints, threshold=0.05, rule="stays_above").set_index("irrep")
    assert table.epoch[STANDARD] == 100 and table.epoch[SIGN] == 300
    assert np.isnan(table.epoch[TWO_TWO])  # key at epoch 100 only
    assert table.order[STANDARD] == 1 and table.order[SIGN] == 2 and pd.isna(table.order[TWO_TWO])
    same = irrep_emergence(S4, dict(checkpoints), threshold=0.05, rule="stays_above").set_index("irrep")
    pd.testing.assert_frame_equal(table, same)
