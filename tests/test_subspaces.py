"""Subspace universality: `principal_angles` from the state against scipy's subspace angles on the principal
component scores, its invariances and a planted shared latent."""

import numpy as np
import pytest
import scipy.linalg
import torch

from universality import UniversalityError
from universality.similarity import principal_angles, svcca


def _sums(x, y):
    """(G_a, G_b, C, tokens): the centred co-moment sums the state holds."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    return xc.T @ xc, yc.T @ yc, xc.T @ yc, len(x)


def _latent_pair(tokens=4000, widths=(10, 8), shared=3, strength=10.0, seed=0):
    """Two unit sets carrying the same `shared`-dim latent (std `strength`), randomly mixed into their units,
    plus private unit-variance noise: float64 [tokens, n_a], [tokens, n_b]."""
    g = torch.Generator().manual_seed(seed)
    z = strength * torch.randn(tokens, shared, generator=g, dtype=torch.float64)
    sides = []
    for width in widths:
        mix = torch.linalg.qr(torch.randn(width, width, generator=g, dtype=torch.float64))[0][:shared]  # [shared, n]
        sides.append(z @ mix + torch.randn(tokens, width, generator=g, dtype=torch.float64) + 50.0)
    return sides


def _kept_reference(x, variance):
    """Fewest top principal directions of x's centred rows holding `variance` of its variance."""
    values = np.linalg.eigvalsh(np.cov(x.numpy(), rowvar=False))[::-1]
    return int(np.searchsorted(np.cumsum(values) / values.sum(), variance) + 1)


def ref_principal_cosines(x, y, ka, kb):
    """Textbook: PCA of each centred side in float64, then scipy's principal angles between the columns of
    the top ka and kb principal component scores; cosines, descending."""
    def scores(m, k):
        m = m.numpy() - m.numpy().mean(0)
        _, vectors = np.linalg.eigh(m.T @ m)
        return m @ vectors[:, ::-1][:, :k]
    return np.sort(np.cos(scipy.linalg.subspace_angles(scores(x, ka), scores(y, kb))))[::-1]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_principal_angles_equal_scipy_subspace_angles_of_the_pc_scores(k):
    x, y = _latent_pair(strength=2.0)
    found = principal_angles(*_sums(x, y), k=k)
    assert found.dtype == torch.float64 and len(found) == k
    np.testing.assert_allclose(found.numpy(), ref_principal_cosines(x, y, k, k), atol=1e-9)
    assert (found[:-1] >= found[1:]).all() and (found >= 0).all() and (found <= 1).all()


@pytest.mark.parametrize("variance", [0.5, 0.9, 0.99])
def test_principal_angles_keep_each_sides_directions_by_variance(variance):
    x, y = _latent_pair(strength=1.5, widths=(12, 5))
    ka, kb = _kept_reference(x, variance), _kept_reference(y, variance)
    found = principal_angles(*_sums(x, y), variance=variance)
    assert len(found) == min(ka, kb)
    np.testing.assert_allclose(found.numpy(), ref_principal_cosines(x, y, ka, kb), atol=1e-9)


def test_svcca_is_the_mean_principal_cosine_at_99_percent_of_the_variance():
    x, y = _latent_pair(strength=1.5)
    sums = _sums(x, y)
    assert svcca(*sums) == pytest.approx(float(principal_angles(*sums, variance=0.99).mean()), abs=1e-12)


def test_principal_angles_are_unchanged_by_rotating_or_scaling_either_side():
    x, y = _latent_pair(strength=2.0)
    g = torch.Generator().manual_seed(5)
    qa = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))[0]
    qb = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0]
    for k in (None, 4):
        before = principal_angles(*_sums(x, y), k=k)
        after = principal_angles(*_sums(3.0 * x @ qa, y @ qb), k=k)
        torch.testing.assert_close(after, before, atol=1e-10, rtol=0)


def test_a_planted_shared_latent_gives_three_cosines_near_1_and_the_rest_small():
    x, y = _latent_pair(shared=3, strength=10.0)
    found = principal_angles(*_sums(x, y), k=6)
    # latent variance 100 against private noise 1 per direction: shared cosines 100 / 101
    assert (found[:3] - 100 / 101).abs().max() < 0.005 and (found[3:] < 0.1).all(), found
    # the latent holds 300 of each side's ~310 variance: 0.9 of it keeps just its 3 directions
    assert len(principal_angles(*_sums(x, y))) == 3
    other = _latent_pair(seed=1)[1]  # a different latent: nothing shared
    assert (principal_angles(*_sums(x, other), k=3) < 0.1).all()


def test_k_beyond_a_rank_deficient_side_is_one_line_and_variance_stops_at_the_rank():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 8, generator=g, dtype=torch.float64)
    y = torch.randn(500, 6, generator=g, dtype=torch.float64)
    assert len(principal_angles(*_sums(x, y), k=3)) == 3
    assert len(principal_angles(*_sums(x, y), variance=1.0)) == 3
    with pytest.raises(UniversalityError, match=r"k=4 exceeds the rank of unit set a \(3 directions"):
        principal_angles(*_sums(x, y), k=4)


@pytest.mark.parametrize("settings, message", [
    (dict(k=0), "k must be an integer >= 1"), (dict(k=True), "k must be an integer >= 1"),
    (dict(k=2.0), "k must be an integer >= 1"), (dict(variance=0.0), r"variance must be a fraction in \(0, 1\]"),
    (dict(variance=1.5), "variance must be a fraction"), (dict(variance="0.9"), "variance must be a fraction"),
])
def test_bad_principal_angle_settings_are_one_line(settings, message):
    x, y = _latent_pair()
    with pytest.raises(UniversalityError, match=message) as error:
        principal_angles(*_sums(x, y), **settings)
    assert "\n" not in str(error.value)


def test_a_dead_side_spans_no_subspace_and_bad_sums_are_one_line():
    x, y = _latent_pair()
    with pytest.raises(UniversalityError, match="unit set b has no variance"):
        principal_angles(*_sums(x, torch.ones_like(y)))
    gram_a, gram_b, cross, tokens = _sums(x, y)
    with pytest.raises(UniversalityError, match="tokens must be an integer"):
        principal_angles(gram_a, gram_b, cross, 0)
    with pytest.raises(UniversalityError, match="cross"):
        principal_angles(gram_a, gram_b, cross.T, tokens)
