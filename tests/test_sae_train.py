"""SAE training and evaluation: planted dictionaries recovered, the sparse step equal to the dense one,
the shuffle buffer, evaluation against float64 formulas, and one-line errors for bad input."""

import math

import pytest
import torch

from universality.errors import UniversalityError
from universality.saes import SAE, evaluate, splice_hook, train
from universality.saes._buffer import shuffled_batches
from universality.saes._sparse import Pattern, decode_kept, encode_kept
from universality.saes._train import _Run, batch_topk

ATOMS, D_IN, ACTIVE, TOKENS = 64, 32, 3, 256  # a planted dictionary: 64 unit atoms in 32 dimensions
PLANTED = dict(d_in=D_IN, latents=128, batch_size=TOKENS, buffer_tokens=8 * TOKENS, lr=3e-3,
               dead_after_tokens=20_000)


@pytest.fixture(autouse=True)
def _one_thread(_deterministic_threads):
    torch.set_num_threads(1)  # after conftest's 2: these tests share 2 cores with other workers


def planted_atoms(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(ATOMS, D_IN, generator=g)
    return atoms / atoms.norm(dim=1, keepdim=True)  # [atoms, d_in]


def planted_stream(atoms: torch.Tensor, seed: int, batches: int, noise: float = 0.01):
    """Tokens [TOKENS, d_in]: each a combination of ACTIVE random atoms, weights in [0.5, 1.5), plus noise."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        chosen = torch.rand(TOKENS, ATOMS, generator=g).topk(ACTIVE, dim=1).indices  # [tokens, active]
        weights = torch.zeros(TOKENS, ATOMS).scatter_(1, chosen, torch.rand(TOKENS, ACTIVE, generator=g) + 0.5)
        yield weights @ atoms + noise * torch.randn(TOKENS, D_IN, generator=g)


def recovered_fraction(atoms: torch.Tensor, W_dec: torch.Tensor, cosine: float = 0.9) -> float:
    """Fraction of atoms with some decoder row at cosine similarity above `cosine`."""
    similarity = atoms @ (W_dec / W_dec.norm(dim=1, keepdim=True)).T  # [atoms, latents]
    return float((similarity.max(dim=1).values > cosine).float().mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_topk_recovers_planted_atoms_for_each_seed(seed):
    atoms = planted_atoms()
    sae = train(planted_stream(atoms, 100 + seed, 600), k=ACTIVE, seed=seed, **PLANTED)
    assert recovered_fraction(atoms, sae.W_dec) >= 0.9
    assert sae.metadata["metrics"]["fvu"] < 0.1
    assert sae.metadata["training"]["steps"] == 600 and sae.metadata["training"]["tokens"] == 600 * TOKENS
    result = evaluate(sae, planted_stream(atoms, 999, 8))
    assert result["fvu"] < 0.1 and result["l0"] <= ACTIVE


def test_relu_l1_learns_a_sparse_code():
    atoms = planted_atoms()
    sae = train(planted_stream(atoms, 100, 400), l1=0.3, **PLANTED)
    result = evaluate(sae, planted_stream(atoms, 999, 8))
    assert sae.activation == "relu" and sae.k is None and sae.threshold is None
    assert result["fvu"] < 0.2  # 0.115 measured; an untrained SAE explains nothing (FVU ~ 1)
    assert result["l0"] < 32  # a quarter of the 128 latents; 17 measured


def test_batchtopk_learns_and_its_threshold_keeps_about_k_latents():
    atoms = planted_atoms()
    sae = train(planted_stream(atoms, 100, 500), k=ACTIVE, activation="batchtopk", **PLANTED)
    assert sae.activation == "batchtopk" and sae.threshold.ndim == 0 and float(sae.threshold) > 0
    result = evaluate(sae, planted_stream(atoms, 999, 8))  # inference: the global threshold, no top-k
    assert result["fvu"] < 0.2  # 0.10 measured
    assert ACTIVE / 2 <= result["l0"] <= 2 * ACTIVE


@pytest.mark.parametrize("rule", [dict(k=4), dict(k=4, activation="batchtopk"), dict(l1=0.3)])
def test_decoder_rows_are_unit_norm_after_training(rule):
    sae = train(planted_stream(planted_atoms(), 5, 20), **rule, **PLANTED)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.latents), atol=1e-5)


def test_same_seed_gives_identical_weights_and_another_seed_does_not():
    def weights(seed):
        sae = train(planted_stream(planted_atoms(), 5, 30), k=4, seed=seed, **PLANTED)
        return torch.cat([sae.W_enc.flatten(), sae.b_enc, sae.W_dec.flatten(), sae.b_dec])
    first = weights(3)
    assert torch.equal(first, weights(3))
    assert not torch.equal(first, weights(4))


def test_sparse_step_gradients_equal_dense_autograd():
    g = torch.Generator().manual_seed(0)
    tokens, latents, d_in, k = 9, 13, 6, 4
    x = torch.randn(tokens, d_in, generator=g, dtype=torch.float64)
    params = [torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
              for shape in ((latents, d_in), (latents,), (latents, d_in), (d_in,))]
    W_enc, b_enc, W_dec, b_dec = params
    x_c = x - b_dec
    pre = torch.addmm(b_enc, x_c, W_enc.T)  # [tokens, latents]
    cols = pre.detach().topk(k, dim=1).indices.sort(dim=1).values
    pattern = Pattern.rows(cols, latents)
    z = encode_kept(x_c, W_enc, b_enc, pattern, pre.detach().gather(1, cols).flatten())
    sparse_loss = (x - decode_kept(z, W_dec, pattern) - b_dec).square().sum()
    dense_z = torch.relu(pre) * torch.zeros(tokens, latents, dtype=torch.bool).scatter_(1, cols, True)
    dense_loss = (x - dense_z @ W_dec - b_dec).square().sum()
    assert torch.allclose(sparse_loss, dense_loss, rtol=1e-12)
    for ours, reference in zip(torch.autograd.grad(sparse_loss, params), torch.autograd.grad(dense_loss, params)):
        assert torch.allclose(ours, reference, rtol=1e-10, atol=1e-12)


def test_batch_topk_equals_one_topk_over_the_batch():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(64, 200, generator=g).relu_()
    acts[:3] += 4  # three tokens hold far more than their share: the candidates' exactness repair
    for count in (64, 64 * 8, 64 * 150):
        ours = batch_topk(acts, count)
        reference = acts.flatten().topk(count).indices
        assert len(set(ours.tolist())) == count
        assert torch.equal(acts.flatten()[ours].sort().values, acts.flatten()[reference].sort().values)


def test_auxk_gives_dead_latents_outside_the_topk_a_gradient():
    x = next(planted_stream(planted_atoms(), 7, 1))
    settings = dict(activation="topk", latents=128, d_in=D_IN, k=ACTIVE, lr=1e-3, aux_k=16, dead_after_tokens=10**9)

    def moved_after_one_step(dead):
        """Latents whose encoder row one step moved, and those no token keeps in its top k."""
        run = _Run(settings, x, torch.Generator().manual_seed(0))
        with torch.no_grad():
            pre = torch.addmm(run.b_enc, x - run.b_dec, run.W_enc.T)  # [tokens, latents]
        silent = torch.ones(128, dtype=torch.bool)
        silent[pre.topk(ACTIVE, dim=1).indices.flatten()] = False
        before = run.W_enc.detach().clone()
        run.dead = silent.nonzero().flatten() if dead else None
        run.step(x)
        return (run.W_enc.detach() != before).any(dim=1), silent
    moved, silent = moved_after_one_step(dead=True)
    assert int(moved[silent].sum()) >= 16  # AuxK reached at least aux_k of them
    moved, silent = moved_after_one_step(dead=False)
    assert not bool(moved[silent].any()) and bool(moved[~silent].all())


def test_shuffle_buffer_serves_every_token_exactly_once():
    stream = [torch.arange(n, n + 37, dtype=torch.float32)[:, None].repeat(1, 2) for n in range(0, 37 * 9, 37)]
    served = list(shuffled_batches(stream, d_in=2, buffer_tokens=64, batch_size=16,
                                   generator=torch.Generator().manual_seed(0)))
    values = torch.cat(served)[:, 0]
    assert sorted(values.tolist()) == list(range(37 * 9))  # 333 tokens: 20 minibatches and 13 (over half)
    assert values.tolist() != list(range(37 * 9))  # shuffled
    again = torch.cat(list(shuffled_batches(stream, d_in=2, buffer_tokens=64, batch_size=16,
                                            generator=torch.Generator().manual_seed(0))))[:, 0]
    assert torch.equal(values, again)


def test_evaluate_fvu_matches_the_float64_formula_on_offset_activations():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(20, 8, generator=g)
    sae = SAE(W.clone(), torch.randn(20, generator=g), W / W.norm(dim=1, keepdim=True), torch.full((8,), 1e3),
              activation="topk", k=3)
    batches = [1e3 + torch.randn(n, 8, generator=g) for n in (50, 7, 120)]
    result = evaluate(sae, batches)
    x = torch.cat(batches).double()
    x_hat = sae(torch.cat(batches)).double()
    fvu = float((x - x_hat).square().sum() / (x - x.mean(0)).square().sum())
    assert math.isclose(result["fvu"], fvu, rel_tol=1e-9)
    assert math.isclose(result["mse"], float((x - x_hat).square().sum()) / 177, rel_tol=1e-9)
    assert result["tokens"] == 177 and result["l0"] == 3.0


def test_evaluate_counts_dead_latents_and_firing_frequency():
    # latent i fires on input dimension i only where it is positive; latents 2 and 3 never see a positive input
    sae = SAE(torch.eye(4), torch.zeros(4), torch.eye(4), torch.zeros(4), subtract_decoder_bias=False)
    x = torch.tensor([[1.0, 0.0, 0.0, -1.0], [2.0, 3.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    result = evaluate(sae, [x[:1], x[1:]])
    assert result["dead_latents"] == 2
    assert torch.equal(result["firing_frequency"], torch.tensor([0.75, 0.5, 0.0, 0.0], dtype=torch.float64))
    assert result["l0"] == 5 / 4


def test_splice_hook_preserves_shape_and_dtype():
    g = torch.Generator().manual_seed(0)
    sae = SAE(torch.randn(6, 4, generator=g), torch.zeros(6), torch.randn(6, 4, generator=g), torch.zeros(4),
              activation="topk", k=2)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    out = splice_hook(sae)(x)
    assert out.shape == x.shape and out.dtype == torch.float64
    assert torch.allclose(out.reshape(-1, 4).float(), sae(x.reshape(-1, 4).float()))


def _stream():
    return [torch.randn(32, 8, generator=torch.Generator().manual_seed(0))]


BAD = [
    (dict(latents=0, k=1), "latents must be a positive integer, got 0"),
    (dict(latents=16), "neither k nor l1"),
    (dict(latents=16, k=2, l1=0.1), "both k and l1"),
    (dict(latents=16, k=32), "k = 32 is larger than latents = 16"),
    (dict(latents=16, k=2, activation="jumprelu"), "train has no activation 'jumprelu'; choose one of: topk"),
    (dict(latents=16, l1=0.1, activation="batchtopk"), "activation 'batchtopk' takes k and not l1"),
    (dict(latents=16, k=2, activation="relu"), "activation 'relu' takes l1 and not k"),
    (dict(latents=16, k=2, batch_size=64, buffer_tokens=32), "buffer_tokens (32) is smaller than batch_size"),
    (dict(latents=16, k=2, lr=-1.0), "lr must be a positive number"),
    (dict(latents=16, k=2, seed=-1), "seed must be an integer >= 0"),
    (dict(latents=16, k=2, d_in=9), "activation batch 0 has shape [32, 8]; expected Tensor[tokens, units=9]"),
    (dict(latents=16, k=2, batches=[]), "the activation stream is empty"),
    (dict(latents=16, k=2, batches=[torch.zeros(0, 8)]), "the activation stream is empty"),
    (dict(latents=16, k=2, batches=[torch.full((4, 8), math.nan)]), "activation batch 0 has NaN"),
    (dict(latents=16, k=2, batches=7), "batches is a int; pass an iterable"),
    (dict(latents=16, k=2, batches=[torch.ones(40, 8)]), "the first minibatch (16 tokens) has no variance"),
]


@pytest.mark.parametrize("arguments, message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_input_raises_one_line(arguments, message):
    arguments = {"batches": _stream(), "d_in": 8, "batch_size": 16, "buffer_tokens": 32, **arguments}
    with pytest.raises(UniversalityError) as error:
        train(arguments.pop("batches"), **arguments)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_evaluate_and_splice_reject_bad_input_in_one_line():
    sae = SAE(torch.eye(4), torch.zeros(4), torch.eye(4), torch.zeros(4))
    for call, message in ((lambda: evaluate(sae, []), "the activation stream is empty"),
                          (lambda: evaluate(sae, [torch.zeros(3, 5)]), "expected Tensor[tokens, units=4]"),
                          (lambda: evaluate("sae", []), "evaluate takes an SAE, got a str"),
                          (lambda: splice_hook(sae)(torch.zeros(2, 5)), "the SAE expects [..., 4]")):
        with pytest.raises(UniversalityError) as error:
            call()
        assert message in str(error.value) and "\n" not in str(error.value)
