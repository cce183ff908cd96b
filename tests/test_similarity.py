"""Representation similarity (universality.similarity): every metric against a direct float64 formula on
token matrices written here from its paper, the invariances each metric claims, 1 for a set against
itself, finite values where the covariance is rank-deficient, the known chance floors, the reservoir's
seeding and merges, and the table `compare_representations` returns."""

import math

import numpy as np
import pytest
import torch

import universality
from universality import UniversalityError
from universality.similarity import (Reservoir, cca, compare_representations, debiased_cka, linear_cka,
                                     mutual_knn, procrustes, pwcca, regression_r2, svcca)
from universality.similarity._state_metrics import thin_svd

STATE = {"cka": linear_cka, "cca": cca, "svcca": svcca, "pwcca": pwcca, "procrustes": procrustes,
         "regression": regression_r2}


def _related(tokens=400, widths=(6, 4), seed=0, offset=0.0):
    """Two unit sets sharing a 3-dim latent, with noise: float64 [tokens, n_a], [tokens, n_b]."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(tokens, 3, generator=g, dtype=torch.float64)
    x = z @ torch.randn(3, widths[0], generator=g, dtype=torch.float64)
    y = z @ torch.randn(3, widths[1], generator=g, dtype=torch.float64)
    x = x + 0.7 * torch.randn(tokens, widths[0], generator=g, dtype=torch.float64) + offset
    y = y + 0.7 * torch.randn(tokens, widths[1], generator=g, dtype=torch.float64) - offset
    return x, y


def _sums(x, y):
    """(G_a, G_b, C, tokens): the centred co-moment sums the state holds."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    return xc.T @ xc, yc.T @ yc, xc.T @ yc, len(x)


# --- direct float64 formulas on token matrices ---------------------------------------------------

def _centre(x):
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(0)


def ref_cka(x, y):  # Kornblith et al. 2019, eq. for linear CKA
    x, y = _centre(x), _centre(y)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def _canonical(x, y):  # QR-based CCA: correlations and x's canonical variates (orthonormal, [tokens, k])
    qx, qy = np.linalg.qr(_centre(x))[0], np.linalg.qr(_centre(y))[0]
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return rho, qx @ u


def ref_cca(x, y):
    return _canonical(x, y)[0].mean()


def ref_svcca(x, y, keep=0.99):  # Raghu et al. 2017: SVD, keep 99% of variance, then CCA
    def reduce(a):
        u, s, _ = np.linalg.svd(_centre(a), full_matrices=False)
        kept = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), keep) + 1)
        return u[:, :kept] * s[:kept]
    return ref_cca(reduce(x), reduce(y))


def ref_pwcca(x, y):  # Morcos et al. 2018: weights alpha_i = sum_j |<h_i, x_j>|
    rho, h = _canonical(x, y)
    alpha = np.abs(h.T @ _centre(x)).sum(axis=1)
    return (alpha * rho).sum() / alpha.sum()


def ref_procrustes(x, y):  # Ding et al. 2021: centred, unit Frobenius norm, nuclear norm of X^T Y
    x, y = _centre(x), _centre(y)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    return np.linalg.svd(x.T @ y, compute_uv=False).sum()


def ref_regression(x, y, ridge):  # ridge least squares as an augmented least-squares problem
    x, y = _centre(x), _centre(y)
    penalty = ridge * np.trace(x.T @ x) / len(x) / x.shape[1]  # on the covariance scale
    augmented = np.vstack([x, math.sqrt(len(x) * penalty) * np.eye(x.shape[1])])
    w = np.linalg.lstsq(augmented, np.vstack([y, np.zeros((x.shape[1], y.shape[1]))]), rcond=None)[0]
    return 1 - np.linalg.norm(y - x @ w) ** 2 / np.linalg.norm(y) ** 2


def ref_ridge_cca(x, y, ridge):
    """The package's ridge CCA from tokens: plain correlations of the regularised canonical variates,
    weighted by s_i = sqrt(var(X u_i) var(Y v_i))."""
    x, y = _centre(x), _centre(y)
    n = len(x)

    def inverse_root(s):
        values, vectors = np.linalg.eigh(s + ridge * np.trace(s) / len(s) * np.eye(len(s)))
        return vectors @ np.diag(values ** -0.5) @ vectors.T
    ka, kb = inverse_root(x.T @ x / n), inverse_root(y.T @ y / n)
    p, _, qh = np.linalg.svd(ka @ (x.T @ y / n) @ kb, full_matrices=False)
    u, v = x @ ka @ p, y @ kb @ qh.T  # variates [tokens, k]
    correlation = (u * v).sum(0) / np.sqrt((u * u).sum(0) * (v * v).sum(0))
    scale = np.sqrt((u * u).sum(0) * (v * v).sum(0)) / n
    return (scale * correlation).sum() / scale.sum()


def ref_debiased_cka(x, y):  # Song et al. 2012 eq. 5 on linear kernels of the raw rows
    def hsic(k, l):
        m = len(k)
        k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
        return ((k * l).sum() + k.sum() * l.sum() / ((m - 1) * (m - 2)) - 2 * (k @ l).sum() / (m - 2)) / (m * (m - 3))
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def ref_mutual_knn(x, y, k):  # Huh et al. 2024: unit rows, k nearest by inner product, shared fraction
    def sets(a):
        a = np.asarray(a, dtype=np.float64)
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        s = a @ a.T
        np.fill_diagonal(s, -np.inf)
        return [set(np.argsort(-row, kind="stable")[:k]) for row in s]
    return np.mean([len(p & q) / k for p, q in zip(sets(x), sets(y))])


# --- state metrics --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, reference", [("cka", ref_cka), ("cca", ref_cca), ("svcca", ref_svcca),
                                             ("pwcca", ref_pwcca), ("procrustes", ref_procrustes)])
def test_state_metric_matches_its_token_formula(name, reference):
    x, y = _related(offset=50.0)
    settings = {"ridge": 0.0} if name in ("cca", "pwcca") else {}
    assert STATE[name](*_sums(x, y), **settings) == pytest.approx(reference(x, y), abs=1e-10)


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 0.3])
def test_ridge_metrics_match_their_token_formulas(ridge):
    x, y = _related(tokens=60, widths=(9, 7))
    assert regression_r2(*_sums(x, y), ridge=ridge) == pytest.approx(ref_regression(x, y, ridge), abs=1e-10)
    g_a, g_b, c, n = _sums(x, y)
    assert regression_r2(g_b, g_a, c.T, n, ridge=ridge) == pytest.approx(ref_regression(y, x, ridge), abs=1e-10)
    assert cca(g_a, g_b, c, n, ridge=ridge) == pytest.approx(ref_ridge_cca(x, y, ridge), abs=1e-10)


def _haar(n, seed):
    q, r = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(r.diagonal())


def test_cka_and_procrustes_unchanged_under_orthogonal_maps_and_scaling():
    x, y = _related()
    for name in ("cka", "procrustes"):
        base = STATE[name](*_sums(x, y))
        assert STATE[name](*_sums(3.0 * x @ _haar(6, 1), y @ _haar(4, 2) / 7)) == pytest.approx(base, abs=1e-12)


def test_cca_unchanged_under_invertible_linear_maps():
    x, y = _related()
    g = torch.Generator().manual_seed(3)
    mapped = x @ torch.randn(6, 6, generator=g, dtype=torch.float64), y @ torch.randn(4, 4, generator=g,
                                                                                       dtype=torch.float64)
    assert cca(*_sums(*mapped), ridge=0.0) == pytest.approx(cca(*_sums(x, y), ridge=0.0), abs=1e-10)


@pytest.mark.parametrize("name", list(STATE))
def test_every_state_metric_ignores_a_rotation_of_the_partner(name):
    """Why there is no Haar-rotated null: rotating b's units leaves every state score as it is."""
    x, y = _related()
    assert STATE[name](*_sums(x, y @ _haar(4, 5))) == pytest.approx(STATE[name](*_sums(x, y)), abs=1e-10)


@pytest.mark.parametrize("name", ["cka", "cca", "svcca", "procrustes"])
def test_symmetric_metrics_are_symmetric(name):
    x, y = _related()
    assert STATE[name](*_sums(y, x)) == pytest.approx(STATE[name](*_sums(x, y)), abs=1e-12)


@pytest.mark.parametrize("name", list(STATE))
@pytest.mark.parametrize("shape", [(400, 6), (40, 50)], ids=["narrow", "wider_than_tokens"])
def test_a_set_against_itself_scores_one(name, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    score = STATE[name](*_sums(x, x))
    if name == "regression":  # ridge shrinkage is real: 1 minus at most ~ridge; exactly 1 at ridge 0
        assert 1 - 1e-3 <= score <= 1 + 1e-12
        assert regression_r2(*_sums(x, x), ridge=0.0) == pytest.approx(1.0, abs=1e-9)
    else:
        assert score == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("name", list(STATE))
@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_rank_deficient_and_wider_than_tokens_sets_give_finite_scores(name, ridge):
    x, y = _related(tokens=30, widths=(50, 40))  # rank <= 29 on both sides
    duplicated = torch.cat([x[:, :5], x[:, :5]], dim=1)  # rank 5 of 10
    settings = {"ridge": ridge} if name in ("cca", "pwcca", "regression") else {}
    for pair in ((x, y), (duplicated, y), (y, duplicated)):
        score = STATE[name](*_sums(*pair), **settings)
        assert math.isfinite(score) and -1e-9 <= score <= 1 + 1e-9


@pytest.mark.parametrize("shape", [(40, 40), (60, 25), (25, 60)])
def test_thin_svd_equals_lapack_svd_and_falls_back_where_a_singular_value_is_tiny(shape):
    g = torch.Generator().manual_seed(3)
    m = torch.randn(*shape, generator=g, dtype=torch.float64)
    p, rho, qh = thin_svd(m)
    p_ref, rho_ref, qh_ref = torch.linalg.svd(m, full_matrices=False)
    assert torch.allclose(rho, rho_ref, rtol=0, atol=1e-12)
    assert torch.allclose(p @ torch.diag(rho) @ qh, m, rtol=0, atol=1e-12)
    k = min(shape)
    assert torch.allclose(p.T @ p, torch.eye(k, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(qh @ qh.T, torch.eye(k, dtype=torch.float64), atol=1e-12)
    assert torch.allclose((p * p_ref).sum(0).abs(), torch.ones(k, dtype=torch.float64), atol=1e-9)  # same vectors
    deficient = m.clone()
    deficient[0], deficient[:, 0] = 0.0, 0.0  # a dead unit on each side: rho = 0, whose vectors LAPACK completes
    for matrix in (deficient, torch.zeros(shape, dtype=torch.float64)):
        assert all(torch.equal(ours, lapack) for ours, lapack in zip(thin_svd(matrix),
                                                                      torch.linalg.svd(matrix, full_matrices=False)))


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_dropping_the_directions_without_variance_changes_no_score(ridge):
    """Sets wider than their tokens (50 and 40 units, 30 tokens: rank 29): `spectrum` keeps 29 directions,
    and every score equals the one over all n eigen-directions (zero eigenvalues included) to 1e-10."""
    from universality.similarity._state_metrics import (STATE_METRICS, Spectrum, eigen_cross, spectrum,
                                                        state_scores)
    x, y = _related(tokens=30, widths=(50, 40), seed=4)
    g_a, g_b, c, n = _sums(x, y)
    kept = [spectrum(g, n) for g in (g_a, g_b)]
    assert [len(s.values) for s in kept] == [29, 29] and [s.width for s in kept] == [50, 40]

    def whole(g):  # every eigen-direction, rounding negatives clamped to 0
        values, vectors = torch.linalg.eigh(g / n)
        return Spectrum(values.flip(0).clamp(min=0), vectors.flip(1), len(values))
    full = [whole(g) for g in (g_a, g_b)]
    got = state_scores(*kept, eigen_cross(c, *kept, n), STATE_METRICS, ridge=ridge)
    want = state_scores(*full, eigen_cross(c, *full, n), STATE_METRICS, ridge=ridge)
    assert got == pytest.approx(want, abs=1e-10)


def test_a_dead_set_has_no_similarity():
    x, _ = _related()
    dead = torch.full((400, 3), 2.5, dtype=torch.float64)
    assert all(math.isnan(metric(*_sums(x, dead))) for metric in STATE.values())
    assert math.isnan(debiased_cka(x, dead))


def test_biased_cka_floor_of_independent_gaussians_and_debiased_near_zero():
    """Plug-in CKA of independent width-8 Gaussians is ~ p / (p + n - 1): 0.20, 0.11, 0.06 at n = 32, 64, 128
    (REFERENCES.md: 0.198 at n = 32); the floor needs the width, since CKA -> 1 as width / n grows."""
    g = torch.Generator().manual_seed(0)
    for tokens, floor in ((32, 0.20), (64, 0.11), (128, 0.06)):
        biased, debiased = [], []
        for _ in range(150):
            x, y = (torch.randn(tokens, 8, generator=g, dtype=torch.float64) for _ in range(2))
            biased.append(linear_cka(*_sums(x, y)))
            debiased.append(debiased_cka(x, y))
        assert np.mean(biased) == pytest.approx(floor, abs=0.01)
        assert np.mean(biased) == pytest.approx(8 / (8 + tokens - 1), abs=0.01)
        assert abs(np.mean(debiased)) < 0.01


# --- token metrics --------------------------------------------------------------------------------

def test_token_metrics_match_their_formulas():
    x, y = _related(tokens=120, offset=20.0)
    assert debiased_cka(x, y) == pytest.approx(ref_debiased_cka(x, y), abs=1e-8)
    assert mutual_knn(x, y, k=7) == pytest.approx(ref_mutual_knn(x, y, 7), abs=1e-12)
    assert debiased_cka(x, x @ _haar(6, 0) * 2) == pytest.approx(1.0, abs=1e-12)
    assert mutual_knn(x, x * 3, k=7) == 1.0


# --- reservoir ------------------------------------------------------------------------------------

def _stream(tokens=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 5, generator=g)
    return {"a": {"s": x[:, :3]}, "b": {"s": x[:, 3:]}}


def _batches(data, cuts):
    return [({m: {s: v[lo:hi] for s, v in sets.items()} for m, sets in data.items()}, lo)
            for lo, hi in zip(cuts[:-1], cuts[1:])]


LAYOUT = {"a": {"s": 3}, "b": {"s": 2}}


def _fill(batches, size=64, seed=0, explicit=False):
    sample = Reservoir(LAYOUT, size, seed=seed)
    for batch, start in batches:
        sample.update(batch, start=start if explicit else None)
    return sample


def _same(r, s):
    return np.array_equal(r.positions_, s.positions_) and all(
        torch.equal(r.rows_[m][u], s.rows_[m][u]) for m in LAYOUT for u in LAYOUT[m])


def test_reservoir_is_seeded_and_independent_of_batch_cuts_order_and_merges():
    data = _stream()
    one = _fill(_batches(data, [0, 1000]))
    cut = _batches(data, [0, 7, 300, 301, 650, 1000])
    assert _same(one, _fill(cut))
    assert _same(one, _fill(cut[::-1], explicit=True))
    left, right = _fill(cut[:3]), _fill(cut[3:], explicit=True)
    assert _same(one, left.merge(right)) and _same(one, right.merge(left))
    assert one.count_ == left.merge(right).count_ == 1000
    assert _same(one, _fill(_batches(data, [0, 1000]), seed=0))
    assert not np.array_equal(one.positions_, _fill(_batches(data, [0, 1000]), seed=1).positions_)
    rows = one.positions_
    assert torch.equal(one.rows_["b"]["s"], data["b"]["s"][torch.from_numpy(rows)])  # rows aligned across models


def test_reservoir_keeps_every_row_of_a_shorter_stream_and_samples_uniformly():
    data = _stream(200)
    assert np.array_equal(_fill(_batches(data, [0, 50, 200]), size=10_000).positions_, np.arange(200))
    means = [_fill(_batches(_stream(2000), [0, 2000]), size=100, seed=s).positions_.mean() for s in range(20)]
    assert np.mean(means) == pytest.approx(999.5, abs=60)  # 20 x 100 uniform draws: standard error ~13


def test_reservoir_refuses_overlapping_positions():
    data = _stream(100)
    first = _fill(_batches(data, [0, 100]))
    with pytest.raises(UniversalityError, match="same stream positions"):
        first.merge(_fill(_batches(data, [0, 100])))


# --- compare_representations ----------------------------------------------------------------------

def _models(tokens=300, seed=0):
    """Two models, two unit sets each; model b's sets are noisy maps of a's."""
    x, y = _related(tokens=tokens, widths=(6, 5), seed=seed, offset=10.0)
    return {"a": {"early": x.float(), "late": y.float()},
            "b": {"early": (x @ _haar(6, 1)).float() + 0.1, "late": y[:, :4].float()}}


def _split(models, cuts):
    return [{m: {s: v[lo:hi] for s, v in sets.items()} for m, sets in models.items()} for lo, hi in zip(cuts, cuts[1:])]


def test_compare_representations_returns_every_pair_and_metric_matching_the_formulas():
    models = _models()
    table = compare_representations(_split(models, [0, 100, 300]), reservoir=1000, nulls=2)
    assert list(table.columns) == ["model_a", "unit_set_a", "model_b", "unit_set_b", "metric", "value", "null_mean",
                                   "null_std"]
    pairs = set(zip(table.model_a, table.unit_set_a, table.model_b, table.unit_set_b))
    assert len(pairs) == 6 and ("a", "early", "a", "late") in pairs and ("a", "late", "b", "early") in pairs
    assert len(table) == 6 * 9  # 8 metrics, regression in both directions
    assert table.null_std.notna().all() and table.value.notna().all()
    for (ma, sa, mb, sb), rows in table.groupby(["model_a", "unit_set_a", "model_b", "unit_set_b"]):
        x, y = models[ma][sa].double(), models[mb][sb].double()
        value = dict(zip(rows.metric, rows.value))
        assert value["cka"] == pytest.approx(ref_cka(x, y), abs=1e-5)
        assert value["procrustes"] == pytest.approx(ref_procrustes(x, y), abs=1e-5)
        assert value["svcca"] == pytest.approx(ref_svcca(x, y), abs=1e-4)
        assert value["regression_b_from_a"] == pytest.approx(ref_regression(x, y, 1e-3), abs=1e-5)
        assert value["regression_a_from_b"] == pytest.approx(ref_regression(y, x, 1e-3), abs=1e-5)
        assert value["cca"] == pytest.approx(ref_ridge_cca(x, y, 1e-3), abs=1e-5)
        assert value["debiased_cka"] == pytest.approx(ref_debiased_cka(x, y), abs=1e-5)  # reservoir holds all rows
        assert value["mutual_knn"] == pytest.approx(ref_mutual_knn(x, y, 10), abs=1e-12)
    same = table[(table.unit_set_a == "early") & (table.unit_set_b == "early") & (table.model_a != table.model_b)]
    assert same.set_index("metric").loc[["cka", "cca", "procrustes", "mutual_knn"], "value"].min() > 0.99


def test_nulls_sit_at_chance_and_are_seeded():
    models = _models(tokens=400)
    run = dict(metrics=("cka", "debiased_cka", "mutual_knn"), reservoir=400, nulls=4, seed=3)
    table = compare_representations([models], **run)
    assert table.equals(compare_representations([models], **run))
    null = table.groupby("metric").null_mean.mean()
    assert abs(null["debiased_cka"]) < 0.02
    assert null["mutual_knn"] == pytest.approx(10 / 399, abs=0.02)
    assert null["cka"] < 0.1 and (table.value > table.null_mean + 3 * table.null_std).all()
    none = compare_representations([models], metrics=("cka",), nulls=0, reservoir=0)
    assert none.null_mean.isna().all() and none.null_std.isna().all()


def test_the_table_is_the_same_on_one_thread_and_on_worker_threads():
    """The pairs run on torch's thread count of single-threaded workers (`map_single_threaded`): each pair's
    numbers are computed alone, so the table does not depend on the thread count."""
    models = _models(tokens=400)
    run = dict(reservoir=400, nulls=2, seed=1)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = compare_representations([models], **run)
        torch.set_num_threads(2)
        assert compare_representations([models], **run).equals(alone)
    finally:
        torch.set_num_threads(previous)


def test_compare_representations_is_exported():
    assert universality.compare_representations is compare_representations
    assert "compare_representations" in universality.__all__


@pytest.mark.parametrize("settings, data, message", [
    ({"metrics": ("cka", "cka2")}, None, "unknown metric 'cka2'; choose one of: cka, cca"),
    ({"ridge": -0.1}, None, "ridge must be a finite number >= 0"),
    ({"k": 10, "reservoir": 10}, None, "k=10 neighbours need more than 10 reservoir rows"),
    ({"k": 10}, "short", "the stream had 8 tokens, too few for mutual_knn with k=10"),
    ({"reservoir": 2}, None, "reservoir=2 rows are too few"),
    ({"nulls": -1}, None, "nulls must be an integer >= 0"),
    ({}, "missing", "batch 0: unit set 'late' is missing from model 'b'"),
])
def test_each_bad_input_gives_one_line(settings, data, message):
    models = _models()
    if data == "short":
        models = {m: {s: v[:8] for s, v in sets.items()} for m, sets in models.items()}
    if data == "missing":
        del models["b"]["late"]
    with pytest.raises(UniversalityError) as error:
        compare_representations([models], **settings)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_reservoir_larger_than_the_stream_keeps_every_row():
    models = _models(tokens=120)
    table = compare_representations([models], metrics=("debiased_cka",), reservoir=100_000, nulls=0)
    x, y = models["a"]["early"].double(), models["b"]["late"].double()
    pair = "model_a == 'a' and unit_set_a == 'early' and model_b == 'b' and unit_set_b == 'late'"
    value = table.query(pair).value.item()
    assert value == pytest.approx(ref_debiased_cka(x, y), abs=1e-5)
