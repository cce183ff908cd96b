"""The paper's definitions (Chughtai, Chan, Nanda 2023, as the authors' code computes them) are the
defaults of the group analysis; the earlier definitions stay available by name and give their old values.
Each is checked against the formula written out here in float64, and non-default thresholds against
what they should change."""

import numpy as np
import pandas as pd
import pytest
import torch
from test_irreps import S4, SIGN, STANDARD, TWO_TWO, _characters, _entries

from universality.irreps import excluded_loss, irrep_emergence, logit_similarity, restricted_loss, unit_irreps
from universality.errors import UniversalityError
from universality.groups import irrep_matrices, make_group, real_irreps


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
    from universality.irreps import analyze_group_seed
    from universality.train import build_group_model
    checkpoints = {}
    for epoch, state in trained.checkpoints.items():
        checkpoints[epoch] = build_group_model(trained.model_config, task.group.order, trained.seed)
        checkpoints[epoch].load_state_dict(state)
    options = {"key_threshold": 0.005, "unit_threshold": 0.5, **options}
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
    from universality.irreps._group_seed import element_matrices
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
    from universality.irreps._loss import restricted_hidden
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
    from universality.irreps._group_seed import run_on_pairs
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


def test_unit_threshold_assigns_a_mixed_unit_only_below_its_share():
    mixed = _entries(S4, STANDARD, "ab")[:, :1] + _entries(S4, TWO_TWO, "ab")[:, :1]  # shares 0.6 and 0.4
    shares = unit_irreps(S4, mixed, threshold=0.5)
    assert shares.irrep[0] is not None and not pd.isna(shares.irrep[0]) and 0.55 < shares.share[0] < 0.65
    assert pd.isna(unit_irreps(S4, mixed, threshold=0.65).irrep[0])


def test_analysis_thresholds_reach_the_seed_tables(s4_trained):
    task, trained = s4_trained
    loose, strict = _analyze(task, trained), _analyze(task, trained, key_threshold=0.3, unit_threshold=0.9)
    similarity = loose["irreps"].set_index("irrep").similarity
    assert set(loose["summary"]["key_irreps"].split()) == set(similarity[similarity > 0.005].index)
    assert set(strict["summary"]["key_irreps"].split()) == set(similarity[similarity > 0.3].index)
    assert strict["summary"]["n_key_irreps"] < loose["summary"]["n_key_irreps"]
    assert loose["units"].irrep.notna().sum() > strict["units"].irrep.notna().sum()
    assert (strict["units"].share.dropna()[strict["units"].irrep.notna()] >= 0.9).all()


def test_every_analysis_setting_passes_to_analyze_group_seed_by_name(s4_trained):
    from universality.config import GroupAnalysisConfig
    task, trained = s4_trained
    settings = GroupAnalysisConfig(key_threshold=0.01, fve_matrices="raw", restricted_hidden_mean="kept",
                                   emergence_rule="stays_above", emergence_threshold=0.005)
    result = _analyze(task, trained, **settings.model_dump())
    assert result["summary"]["restricted_loss"] == pytest.approx(
        _analyze(task, trained, key_threshold=0.01, restricted_hidden_mean="kept")["summary"]["restricted_loss"])
    assert result["emergence"].epoch.min() == 0


def test_transformer_losses_read_hidden_through_w_out_w_u_as_the_paper_and_forward_by_name():
    from universality.irreps._group_seed import run_on_pairs
    from universality.config import GroupTrainConfig, GroupTransformerConfig
    from universality.tasks import composition_task
    from universality.train import train_group_seed
    group = make_group("S3")
    task = composition_task(group, 0.7, seed=0)
    trained = train_group_seed(task, GroupTransformerConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32),
                               GroupTrainConfig(epochs=200, lr=1e-2, train_fraction=0.7, checkpoints=0, threads=1),
                               seed=0)
    model, unit_set = trained.model, "blocks.0.mlp.hook_post"
    paper = _analyze_one(task, model, unit_set)
    key = paper["key_irreps"].split()
    assert key
    _, hidden = run_on_pairs(model, task, unit_set)
    target, train = task.target.numpy(), task.train.numpy()
    # the authors' hidden_to_logits: hidden @ W_out @ W_U, restricted = the key rho(ab) projection only
    basis = _orthonormal(np.hstack([_entries(group, label) for label in key]))
    part = basis @ (basis.T @ hidden)
    w_out, w_u = (layer.weight.detach().double().numpy().T for layer in (model.blocks[0].mlp.fc_out, model.unembed))
    readout = w_out @ w_u  # [d_mlp, d_model] @ [d_model, order]
    assert paper["restricted_loss"] == pytest.approx(_direct_loss(part @ readout, target), rel=1e-9)
    assert paper["excluded_loss"] == pytest.approx(_direct_loss(((hidden - part) @ readout)[train], target[train]),
                                                   rel=1e-9)
    # "forward" with the mean kept: this package's earlier values, the replaced layer patched into the model
    old = _analyze_one(task, model, unit_set, loss_readout="forward", restricted_hidden_mean="kept")
    for name, replaced, pairs in (("restricted_loss", part + hidden.mean(axis=0), slice(None)),
                                  ("excluded_loss", hidden - part, train)):
        patch = torch.as_tensor(replaced, dtype=torch.float32)
        handle = model.blocks[0].mlp.hook_post.register_forward_hook(lambda module, inputs, output: patch)
        try:
            with torch.no_grad():
                logits = model(task.left, task.right).double().numpy()
        finally:
            handle.remove()
        assert old[name] == pytest.approx(_direct_loss(logits[pairs], target[pairs]), rel=1e-6)
    assert abs(old["restricted_loss"] - paper["restricted_loss"]) > 1e-4
    with pytest.raises(UniversalityError, match="loss_readout 'direct' reads logits from the MLP's hook_post"):
        _analyze_one(task, model, "blocks.0.mlp.hook_pre")


def _analyze_one(task, model, unit_set, **options):
    from universality.irreps import analyze_group_seed
    return analyze_group_seed(task, model, unit_set=unit_set, key_threshold=0.01, unit_threshold=0.5,
                              **options)["summary"]
