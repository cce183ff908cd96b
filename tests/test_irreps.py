"""Irrep metrics of group-composition models: planted ground truth, invariances, float64 references."""

import numpy as np
import pandas as pd
import pytest
import torch

from universality.analyze import (check_subgroup, coset_constancy, excluded_loss, fourier_key_frequencies,
                                  fraction_logits_explained, fraction_variance_explained, hidden_fve,
                                  irrep_emergence, logit_similarity, model_loss, neuron_irreps, restricted_loss,
                                  subgroups_of_interest)
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

def test_neuron_irreps_finds_planted_units_and_flags_dead_ones():
    units = np.hstack([_entries(S4, STANDARD, "ab")[:, :1],  # 0: rho(ab) entry
                       _entries(S4, SIGN, "a"),  # 1: sign(a)
                       _entries(S4, TWO_TWO, "b")[:, 1:2],  # 2: rho(b) entry
                       _entries(S4, STANDARD, "a")[:, :1] * _entries(S4, STANDARD, "b")[:, 4:5],  # 3: (rho, rho) block
                       np.zeros((576, 1)),  # 4: never fires
                       np.full((576, 1), 5.0),  # 5: constant
                       _entries(S4, STANDARD, "ab")[:, :1] + _entries(S4, TWO_TWO, "ab")[:, :1]])  # 6: mixed
    table = neuron_irreps(S4, np.maximum(units, 0) - np.maximum(-units, 0), threshold=0.7)
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
    table = coset_constancy(S4, units, stab).set_index(["neuron", "of", "side"]).constancy
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


# paper definitions (Chughtai et al.'s code) as defaults, earlier ones by name ----------------------------------

def _orthonormal(columns):
    """An orthonormal basis [rows, rank] of the span of `columns` (float64 SVD)."""
    u, s, _ = np.linalg.svd(np.asarray(columns, dtype=np.float64), full_matrices=False)
    return u[:, s > 1e-9 * s[0]]


def _paper_fve(group, label, matrix):
    """The authors' percent_total_embed / percent_unembed: ||Q^T M||^2 / ||M||^2, Q an orthonormal basis of
    the irrep's matrix entries rho(x)_ij as functions of the element x (rows of M)."""
    basis = _orthonormal(irrep_matrices(group, label).reshape(group.order, -1))
    return np.sum((basis.T @ matrix) ** 2) / np.sum(matrix**2)


def _direct_loss(logits, target):
    """Float64 mean cross-entropy, log-sum-exp written out."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(target)), target]))


@pytest.fixture(scope="module")
def s4_trained():
    """An S4 MLP trained to full test accuracy (about 1 s on one thread), with its checkpoints."""
    from universality.tasks import composition_task
    from universality.train import GroupMLPConfig, GroupTrainConfig, train_group_seed
    torch.set_num_threads(1)
    config = GroupTrainConfig(epochs=3000, lr=3e-2, train_fraction=0.7, log_every=25, checkpoints=12,
                              stop_at_test_accuracy=1.0, threads=1)
    task = composition_task(S4, config.train_fraction, seed=0)
    return task, train_group_seed(task, GroupMLPConfig(embed_dim=32, hidden=64), config, seed=0)


def _analyze(task, trained, **options):
    from universality.analyze import analyze_group_seed
    from universality.train import build_group_model
    checkpoints = {}
    for epoch, state in trained.checkpoints.items():
        checkpoints[epoch] = build_group_model(trained.model_config, task.group.order, trained.seed)
        checkpoints[epoch].load_state_dict(state)
    options = {"key_threshold": 0.005, "neuron_threshold": 0.5, **options}
    return analyze_group_seed(task, trained.model, unit_set="mlp.hook_post", checkpoint_models=checkpoints,
                              **options)


def test_embedding_fve_is_the_papers_e_w_by_default_and_raw_by_name(s4_trained):
    task, trained = s4_trained
    model = trained.model
    e_left = model.embed_left.detach().double().numpy()  # [24, embed]
    w_left = model.linear.weight.detach().double().numpy()[:, :32]  # [hidden, embed]: W_L
    unembed = model.unembed.weight.detach().double().numpy()
    paper = _analyze(task, trained)["irreps"].set_index("irrep")
    raw = _analyze(task, trained, fve_matrices="raw")["irreps"].set_index("irrep")
    gaps = []
    for irrep in real_irreps(S4):
        label = irrep.label
        assert paper.fve_embed_left[label] == pytest.approx(_paper_fve(S4, label, e_left @ w_left.T), abs=1e-9)
        assert raw.fve_embed_left[label] == pytest.approx(_paper_fve(S4, label, e_left), abs=1e-9)
        assert paper.fve_unembed[label] == raw.fve_unembed[label] == pytest.approx(
            _paper_fve(S4, label, unembed), abs=1e-9)
        gaps.append(abs(paper.fve_embed_left[label] - raw.fve_embed_left[label]))
    assert max(gaps) > 0.01  # the two definitions are measurably apart on a trained model


def test_transformer_paper_unembedding_is_read_from_the_mlp_neurons():
    from universality.analyze import element_matrices
    from universality.models import GroupTransformer
    model = GroupTransformer(6, d_model=8, n_heads=2, d_head=4, d_mlp=16, seed=0)
    paper, raw = element_matrices(model), element_matrices(model, fve_matrices="raw")
    w_out = model.blocks[0].mlp.fc_out.weight.detach().double().numpy().T  # [d_mlp, d_model], the paper's W_out
    w_u = model.unembed.weight.detach().double().numpy().T  # [d_model, order], the paper's W_U
    assert np.allclose(paper["unembed"], (w_out @ w_u).T, atol=1e-12)  # get_unembed: W_out @ W_U, elements as rows
    assert np.array_equal(raw["unembed"], w_u.T) and np.array_equal(paper["embed"], raw["embed"])
    with pytest.raises(UniversalityError, match="fve_matrices must be 'paper' or 'raw'"):
        element_matrices(model, fve_matrices="composed")


def test_restricted_loss_drops_the_mean_as_the_paper_and_keeps_it_by_name():
    from universality.analyze import restricted_hidden
    rng = np.random.default_rng(11)
    # a ReLU layer with a mean and some rho(ab) structure, and a random unembedding
    hidden = np.maximum(0.0, 0.5 + np.hstack([_entries(S4, STANDARD), _entries(S4, SIGN)]) @ rng.standard_normal((10, 12))
                        + 0.3 * rng.standard_normal((576, 12)))
    unembed, target = 3 * rng.standard_normal((24, 12)), S4.table.ravel()
    keys = [STANDARD, SIGN]
    # the authors' total_hidden_excluded_and_restricted_loss: sum over key irreps of the projection of the
    # (uncentred) hidden layer onto the orthonormalised rho(ab) entries; logits = restricted @ W_U
    basis = _orthonormal(np.hstack([_entries(S4, label) for label in keys]))  # [pairs, 10]
    paper_hidden = basis @ (basis.T @ hidden)
    assert np.allclose(restricted_hidden(S4, hidden, keys), paper_hidden, atol=1e-10)
    paper = _direct_loss(paper_hidden @ unembed.T, target)
    assert restricted_loss(S4, hidden, unembed, target, keys) == pytest.approx(paper, rel=1e-10)
    # "kept" is this package's earlier value: the mean over pairs added back
    kept_hidden = paper_hidden + hidden.mean(axis=0)
    assert np.allclose(restricted_hidden(S4, hidden, keys, hidden_mean="kept"), kept_hidden, atol=1e-10)
    kept = restricted_loss(S4, hidden, unembed, target, keys, hidden_mean="kept")
    assert kept == pytest.approx(_direct_loss(kept_hidden @ unembed.T, target), rel=1e-10)
    assert abs(kept - paper) > 1e-3
    # the excluded loss removes only the rho(ab) part: the same under both definitions, as in the paper
    assert excluded_loss(S4, hidden, unembed, target, keys) == pytest.approx(
        _direct_loss((hidden - paper_hidden) @ unembed.T, target), rel=1e-10)
    with pytest.raises(UniversalityError, match="hidden_mean must be 'dropped'"):
        restricted_loss(S4, hidden, unembed, target, keys, hidden_mean="centred")


def _dense_similarity(group, logits):
    """{irrep: cosine of centred logits with chi(a b c^-1)}, float64, written out."""
    centred = logits - logits.mean(axis=1, keepdims=True)
    return {r.label: float(np.sum(centred * _characters(group, r.label)) / np.linalg.norm(centred)
                           / np.linalg.norm(_characters(group, r.label))) for r in real_irreps(group)}


def test_emergence_follows_the_papers_order_script_on_a_trained_model(s4_trained):
    """determine_key_rep_order.py: key irreps (final similarity > 0.005) dated by their first checkpoint above
    0.05, written out here in float64 (without the script's one-irrep-per-checkpoint tie-break)."""
    from universality.analyze import run_on_pairs
    from universality.train import build_group_model
    task, trained = s4_trained
    epochs = sorted(trained.checkpoints)
    logits = {}
    for epoch in epochs:
        model = build_group_model(trained.model_config, 24, trained.seed)
        model.load_state_dict(trained.checkpoints[epoch])
        logits[epoch] = run_on_pairs(model, task, "mlp.hook_post")[0]
    rows = [_dense_similarity(S4, logits[epoch]) for epoch in epochs]
    table = irrep_emergence(S4, logits).set_index("irrep")
    for label in table.index:
        key = rows[-1][label] > 0.005
        crossed = [epoch for epoch, row in zip(epochs, rows) if row[label] > 0.05]
        expected = crossed[0] if key and crossed else np.nan
        assert table.epoch[label] == expected or (np.isnan(expected) and np.isnan(table.epoch[label])), label
    assert table.order.notna().sum() >= 3 and table.order.max() >= 3
    # the key cut 0.005 with the earlier rule: random S4 logits already score near it, so irreps that end
    # key "emerge" at the first checkpoints; the order script's 0.05 dates them later
    old = irrep_emergence(S4, logits, threshold=0.005, rule="stays_above").dropna(subset=["epoch"])
    assert old.epoch.max() <= epochs[1] < table.epoch.min()


def _with_similarities(group, similarities, seed=0):
    """Logits [pairs, n] whose logit similarity with each irrep is exactly as given ({label: value})."""
    units = {r.label: _characters(group, r.label) / np.linalg.norm(_characters(group, r.label))
             for r in real_irreps(group)[1:]}
    rest = np.random.default_rng(seed).standard_normal(units[STANDARD].shape)
    rest -= rest.mean(axis=1, keepdims=True)
    rest -= sum(np.sum(rest * unit) * unit for unit in units.values())  # orthogonal to every character
    rest /= np.linalg.norm(rest)
    planted = sum((value * units[label] for label, value in similarities.items()), np.zeros_like(rest))
    return planted + np.sqrt(1 - sum(v**2 for v in similarities.values())) * rest


def test_emergence_rules_and_thresholds_on_planted_similarities():
    checkpoints = [(0, _with_similarities(S4, {})), (100, _with_similarities(S4, {STANDARD: 0.1})),
                   (200, _with_similarities(S4, {STANDARD: 0.02, SIGN: 0.3})),
                   (300, _with_similarities(S4, {STANDARD: 0.4, SIGN: 0.5, TWO_TWO: 0.02}))]
    assert logit_similarity(S4, checkpoints[2][1]).similarity.round(12).tolist() == [0, 0.3, 0, 0.02, 0]
    # the order script's rule: first crossing of 0.05 by the irreps key at the end (> 0.005)
    first = irrep_emergence(S4, checkpoints).set_index("irrep")
    assert first.epoch[STANDARD] == 100 and first.epoch[SIGN] == 200 and np.isnan(first.epoch[TWO_TWO])
    assert first.order[[STANDARD, SIGN, TWO_TWO]].tolist() == [1, 2, 3]  # key, never above 0.05: last
    # the earlier rule: std dips below 0.05 at 200, so it emerges for good only at 300
    stays = irrep_emergence(S4, checkpoints, rule="stays_above").set_index("irrep")
    assert stays.epoch[STANDARD] == 300 and stays.epoch[SIGN] == 200 and pd.isna(stays.order[TWO_TWO])
    # a higher emergence threshold dates std later; a higher key threshold drops (2,2) from the order
    higher = irrep_emergence(S4, checkpoints, threshold=0.2).set_index("irrep")
    assert higher.epoch[STANDARD] == 300 and higher.order[[SIGN, STANDARD, TWO_TWO]].tolist() == [1, 2, 3]
    fewer = irrep_emergence(S4, checkpoints, key_threshold=0.03).set_index("irrep")
    assert pd.isna(fewer.order[TWO_TWO]) and fewer.order[[STANDARD, SIGN]].tolist() == [1, 2]
    with pytest.raises(UniversalityError, match="rule must be 'first_crossing'"):
        irrep_emergence(S4, checkpoints, rule="first")


# thresholds other than the defaults change the results as they should ------------------------------------------

def test_key_threshold_moves_irreps_in_and_out_of_the_key_set():
    logits = 0.6 * _characters(S4, STANDARD) / np.linalg.norm(_characters(S4, STANDARD)) \
        + 0.8 * _characters(S4, SIGN) / np.linalg.norm(_characters(S4, SIGN))  # similarities 0.6 and 0.8
    for threshold, expected in ((0.5, {STANDARD, SIGN}), (0.7, {SIGN}), (0.9, set())):
        table = logit_similarity(S4, logits, threshold=threshold)
        assert set(table.irrep[table.key]) == expected, threshold


def test_neuron_threshold_assigns_a_mixed_unit_only_below_its_share():
    mixed = _entries(S4, STANDARD, "ab")[:, :1] + _entries(S4, TWO_TWO, "ab")[:, :1]  # shares 0.6 and 0.4
    shares = neuron_irreps(S4, mixed, threshold=0.5)
    assert shares.irrep[0] is not None and not pd.isna(shares.irrep[0]) and 0.55 < shares.share[0] < 0.65
    assert pd.isna(neuron_irreps(S4, mixed, threshold=0.65).irrep[0])


def test_analysis_thresholds_reach_the_seed_tables(s4_trained):
    task, trained = s4_trained
    loose, strict = _analyze(task, trained), _analyze(task, trained, key_threshold=0.3, neuron_threshold=0.9)
    similarity = loose["irreps"].set_index("irrep").similarity
    assert set(loose["summary"]["key_irreps"].split()) == set(similarity[similarity > 0.005].index)
    assert set(strict["summary"]["key_irreps"].split()) == set(similarity[similarity > 0.3].index)
    assert strict["summary"]["n_key_irreps"] < loose["summary"]["n_key_irreps"]
    assert loose["neurons"].irrep.notna().sum() > strict["neurons"].irrep.notna().sum()
    assert (strict["neurons"].share.dropna()[strict["neurons"].irrep.notna()] >= 0.9).all()


def test_every_analysis_setting_passes_to_analyze_group_seed_by_name(s4_trained):
    from universality.config import GroupAnalysisConfig
    task, trained = s4_trained
    settings = GroupAnalysisConfig(key_threshold=0.01, fve_matrices="raw", restricted_hidden_mean="kept",
                                   emergence_rule="stays_above", emergence_threshold=0.005)
    result = _analyze(task, trained, **settings.model_dump())
    assert result["summary"]["restricted_loss"] == pytest.approx(
        _analyze(task, trained, key_threshold=0.01, restricted_hidden_mean="kept")["summary"]["restricted_loss"])
    assert result["emergence"].epoch.min() == 0
