"""Clock or pizza (Zhong et al. 2023): the attention rate, the diagnostics and the classification."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from universality.algorithms import (algorithm_fractions, attention_rate_sweep, circle_diagnostics, classify_algorithm,
                                     classify_circles, correct_logits, diagnose, distance_irrelevance,
                                     embedding_key_frequencies, gradient_symmetricity, isolate_circle)
from universality.config import GroupTransformerConfig
from universality.errors import UniversalityError
from universality.groups import make_group
from universality.models import GroupTransformer

torch.set_num_threads(1)
torch.manual_seed(0)


def _reference_forward(model: GroupTransformer, left, right, rate: float | None):
    """The transformer's forward written out op by op; `rate` None is the forward before the attention
    rate existed (softmax only), else pattern = rate softmax + (1 - rate)."""
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    tokens = torch.stack([left, right, torch.full_like(left, model.order)], dim=1)  # [pairs, 3]
    resid = model.embed(tokens) + model.pos_embed.weight  # [pairs, 3, d_model]
    pairs, h, e = len(left), model.n_heads, model.d_head
    q = attn.query(resid[:, -1]).view(pairs, h, e)
    k = attn.key(resid).view(pairs, 3, h, e)
    v = attn.value(resid).view(pairs, 3, h, e)
    pattern = (torch.einsum("phd,pkhd->phk", q, k) / math.sqrt(e)).softmax(dim=-1)
    if rate is not None:
        pattern = rate * pattern + (1 - rate)
    last = resid[:, -1] + attn.out(torch.einsum("phk,pkhd->phd", pattern, v).reshape(pairs, h * e))
    last = last + mlp.fc_out(F.relu(mlp.fc_in(last)))
    return model.unembed(last)


def _pairs(n):
    return torch.arange(n * n) // n, torch.arange(n * n) % n


def test_attention_rate_one_is_the_old_forward_bit_for_bit():
    left, right = _pairs(7)
    for seed in (0, 1):
        default = GroupTransformer(7, d_model=16, n_heads=2, d_head=8, d_mlp=32, seed=seed)
        explicit = GroupTransformer(7, d_model=16, n_heads=2, d_head=8, d_mlp=32, seed=seed, attention_rate=1.0)
        with torch.no_grad():
            old = _reference_forward(default, left, right, rate=None)
            assert torch.equal(default(left, right), old)
            assert torch.equal(explicit(left, right), old)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_attention_rate_mixes_softmax_with_ones_as_the_authors(rate):
    model = GroupTransformer(7, d_model=16, n_heads=2, d_head=8, d_mlp=32, seed=3, attention_rate=rate)
    left, right = _pairs(7)
    with torch.no_grad():
        torch.testing.assert_close(model(left, right), _reference_forward(model, left, right, rate))


def test_default_rate_leaves_config_dumps_and_so_fingerprints_unchanged():
    assert "attention_rate" not in GroupTransformerConfig().model_dump()
    assert GroupTransformerConfig(attention_rate=0.0).model_dump()["attention_rate"] == 0.0


class _FixedLogits(nn.Module):
    """A "model" whose logits are a given function of (a, b, c)."""

    def __init__(self, n, function):
        super().__init__()
        self.order, self.function = n, function

    def forward(self, left, right):
        c = torch.arange(self.order)
        return self.function(left[:, None].double(), right[:, None].double(), c[None].double())


def test_distance_irrelevance_is_one_for_sum_only_logits_and_zero_for_distance_only():
    n, w = 11, 2 * math.pi * 3 / 11
    by_sum = _FixedLogits(n, lambda a, b, c: torch.cos(w * (a + b - c)) + torch.sin(w * (a + b)))  # clock-like
    by_distance = _FixedLogits(n, lambda a, b, c: torch.abs(torch.cos(w * (a - b) / 2)) * torch.cos(w * (a + b - c)))
    assert distance_irrelevance(by_sum, make_group(f"C{n}")) == pytest.approx(1.0)
    assert distance_irrelevance(by_distance, make_group(f"C{n}")) == pytest.approx(0.0, abs=1e-12)
    table = correct_logits(by_distance, make_group(f"C{n}"))  # [sums, distances]
    assert table.shape == (n, n) and not np.isnan(table).any()


def test_constant_attention_has_symmetric_gradients_by_construction():
    model = GroupTransformer(11, d_model=16, n_heads=2, d_head=8, d_mlp=32, seed=0, attention_rate=0.0)
    assert gradient_symmetricity(model, make_group("C11")) == pytest.approx(1.0, abs=1e-6)
    softmax = GroupTransformer(11, d_model=16, n_heads=2, d_head=8, d_mlp=32, seed=0)
    assert gradient_symmetricity(softmax, make_group("C11")) < 0.999


def test_classify_algorithm_thresholds():
    assert classify_algorithm(0.9937, 0.17) == "pizza"  # the paper's model A
    assert classify_algorithm(0.3336, 0.85) == "clock"  # model B
    assert classify_algorithm(0.99, 0.8) == "mixed"  # symmetric but distance-blind
    assert classify_algorithm(0.5, 0.3) == "mixed"  # asymmetric but distance-bound


def test_algorithm_fractions_count_only_generalised_seeds():
    sweep = pd.DataFrame({"attention_rate": [0.0, 0.0, 0.0, 1.0, 1.0], "algorithm": ["pizza", "mixed", "clock",
                          "clock", "clock"], "test_accuracy": [1.0, 1.0, 0.5, 1.0, 0.2]})
    table = algorithm_fractions(sweep)
    assert table.loc[0.0, "generalised"] == 2 and table.loc[0.0, "pizza"] == 0.5 and table.loc[0.0, "clock"] == 0
    assert table.loc[1.0, "seeds"] == 2 and table.loc[1.0, "clock"] == 1.0


def _one_line_error(call, *words):
    with pytest.raises(UniversalityError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_bad_inputs_raise_one_line_errors():
    for rate in (1.5, -0.1, math.nan):
        _one_line_error(lambda rate=rate: GroupTransformerConfig(attention_rate=rate), "attention_rate")
        _one_line_error(lambda rate=rate: GroupTransformer(5, d_model=8, n_heads=2, d_head=4, d_mlp=8,
                                                           attention_rate=rate), "attention_rate", "[0, 1]")
    model = GroupTransformer(6, d_model=8, n_heads=2, d_head=4, d_mlp=8)
    for name in ("S3", "D3", "C2xC3"):  # order 6, none of them C_6 with residues 0..5
        _one_line_error(lambda name=name: gradient_symmetricity(model, make_group(name)), "cyclic", name)
        _one_line_error(lambda name=name: distance_irrelevance(model, make_group(name)), "cyclic")
    _one_line_error(lambda: gradient_symmetricity(model, make_group("C7")), "6", "7")
    _one_line_error(lambda: gradient_symmetricity(model, make_group("C6"), samples=0), "samples")
    _one_line_error(lambda: embedding_key_frequencies(_FixedLogits(6, None), make_group("C6")), "GroupTransformer")
    _one_line_error(lambda: classify_algorithm(math.nan, 0.5), "gradient_symmetricity")
    _one_line_error(lambda: attention_rate_sweep(1, [0.0], [0]), "n must be")
    _one_line_error(lambda: attention_rate_sweep(7, [2.0], [0]), "attention_rate")
    _one_line_error(lambda: attention_rate_sweep(7, [0.0], [0, 0]), "distinct")


def test_softmax_attention_learns_a_clock_and_constant_attention_a_pizza():
    """Ground truth: C_31 (defaults of `attention_rate_sweep`), one seed at attention rate 1 and two at 0. Both
    constant-attention seeds hold three pizzas each and read "mixed" as a whole (distance irrelevance 0.71-0.77),
    pizza circle by circle."""
    clock = attention_rate_sweep(31, [1.0], [1]).iloc[0]
    assert clock.test_accuracy == 1.0 and clock.gradient_symmetricity < 0.5 and clock.distance_irrelevance > 0.9
    assert clock.algorithm == clock.whole_model_algorithm == "clock"
    assert set(clock.circle_algorithms) == {"clock"} and len(clock.key_frequencies) >= 1
    for _, pizza in attention_rate_sweep(31, [0.0], [0, 1]).iterrows():
        assert pizza.test_accuracy == 1.0 and pizza.gradient_symmetricity == pytest.approx(1.0, abs=1e-6)
        assert pizza.whole_model_algorithm == "mixed" and pizza.distance_irrelevance > 0.65
        assert pizza.algorithm == "pizza" and len(pizza.key_frequencies) == 3
        assert max(pizza.circle_distance_irrelevance) < 0.45


def test_a_group_run_on_c_n_diagnoses_every_transformer_seed_and_reports_the_fractions(tmp_path):
    """The algorithm step of a group run: transformers of two attention rates on C_7, briefly trained; one
    row per seed with its diagnostics and the fractions per rate, in tables and in the report."""
    import tomllib
    import pandas as pd
    from universality.api import run_experiment
    from universality.config import parse_config
    model = 'arch = "transformer"\nd_model = 16\nn_heads = 2\nd_head = 8\nd_mlp = 32\n'
    text = (f'kind = "groups"\nname = "cp"\nseeds = [0, 1]\n[task]\ngroup = "C7"\n'
            f'[[model]]\n{model}attention_rate = 0.0\n'
            f'[[model]]\n{model}attention_rate = 1.0\n[train]\nepochs = 30\nthreads = 1\ncheckpoints = 0\n'
            '[calibration]\nenabled = false\n[similarity]\nenabled = false\n[posterior]\nenabled = false\n')
    run = run_experiment(parse_config(tomllib.loads(text)), runs_dir=tmp_path)
    algorithms = pd.read_parquet(run.run_dir / "tables" / "algorithms.parquet")
    assert len(algorithms) == 4 and set(algorithms.attention_rate) == {0.0, 1.0}
    assert set(algorithms.algorithm) | set(algorithms.whole_model_algorithm) <= {"clock", "pizza", "mixed"}
    circles = algorithms.key_frequencies.str.split().map(len)
    assert (algorithms.circle_algorithms.str.split().map(len) == circles).all()
    assert (algorithms[algorithms.attention_rate == 0.0].gradient_symmetricity > 0.999).all()  # a sum, by construction
    fractions = pd.read_parquet(run.run_dir / "tables" / "algorithm_fractions.parquet")
    assert list(fractions.attention_rate) == [0.0, 1.0] and (fractions.seeds == 2).all()
    assert {"pizza", "whole_model_pizza"} <= set(fractions.columns)
    assert "Clock or pizza?" in (run.run_dir / "report.html").read_text()


class _CircleModel(nn.Module):
    """Ground truth without training: circles of frequencies k on the embedding, read out as an exact clock or
    pizza. Embedding block k (columns 2j, 2j + 1) holds e_k(x) = exp(i w_k x), w_k = 2 pi k / n ("=" row 0);
    the logit of answer c is a sum over blocks of Re(z_k exp(-i w_k c)) (the paper's Q_clock, Q_pizza), with

    clock: z = e(a) e(b) (1 + ripple cos(w s)) = exp(i w s) (1 + ripple cos(w s)), s = a + b;
    pizza: m = (e(a) + e(b)) / 2, z = m^2 / |m| (1 + ripple cos(w s)) = |cos(w d / 2)| exp(i w s) (...), d = a - b;
    accompanying pizza of k (block 2k, its e(x) = exp(2 i w_k x)): z = -(e(a) + e(b)) / 4, so the logit is
        -(cos(w_k (2a - c)) + cos(w_k (2b - c))) / 4 and the correct one -cos(w_k d) / 2 = 1/2 - cos^2(w_k d / 2):
        large where pizza k's |cos(w_k d / 2)| is small; the sum varies with d by 1/4 where each term does by 1.

    The ripple (a dependence on the sum s, as a finite set of ReLUs gives) keeps the correct logits from being
    exactly constant; every term vanishes when its block is zero, so `isolate_circle` keeps one term."""

    def __init__(self, n, terms, ripple=0.2):
        super().__init__()
        self.order, self.terms, self.ripple = n, terms, ripple  # terms: [(embedding frequency, kind)]
        self.embed = nn.Embedding(n + 1, 2 * len(terms))
        x = torch.arange(n, dtype=torch.float64)
        with torch.no_grad():
            self.embed.weight.zero_()
            for j, (k, _) in enumerate(terms):
                self.embed.weight[:n, 2 * j] = torch.cos(2 * math.pi * k * x / n).float()
                self.embed.weight[:n, 2 * j + 1] = torch.sin(2 * math.pi * k * x / n).float()

    def forward(self, left, right):
        tokens = torch.stack([left, right, torch.full_like(left, self.order)], dim=1)  # [pairs, 3]
        emb = self.embed(tokens).double()  # [pairs, 3, 2 terms]
        points = torch.complex(emb[..., 0::2], emb[..., 1::2])  # [pairs, 3, terms]
        e_a, e_b = points[:, 0], points[:, 1]  # [pairs, terms]
        answers = torch.arange(self.order, dtype=torch.float64)
        logits = torch.zeros(len(left), self.order, dtype=torch.float64)
        for j, (k, kind) in enumerate(self.terms):
            if kind == "accompanying":
                z, w = -(e_a[:, j] + e_b[:, j]) / 4, 2 * math.pi * (k // 2) / self.order
            else:
                w = 2 * math.pi * k / self.order
                if kind == "clock":
                    z = e_a[:, j] * e_b[:, j]
                else:
                    m = (e_a[:, j] + e_b[:, j]) / 2
                    size = m.abs()
                    z = torch.where(size > 1e-9, m * m / torch.where(size > 1e-9, size, 1.0), 0.0)
                size = z.abs()
                direction = torch.where(size > 1e-9, z / torch.where(size > 1e-9, size, 1.0), 0.0)  # exp(i w s)
                z = z * (1 + self.ripple * direction.real)
            logits = logits + (z[:, None] * torch.exp(-1j * w * answers)[None]).real  # [pairs, n]
        return logits.float()


def _n31_pizzas_with_accompaniment():
    return _CircleModel(31, [(3, "pizza"), (5, "pizza"), (6, "accompanying"), (10, "accompanying")])


def test_isolate_circle_keeps_one_frequency_and_the_mean_of_the_embedding():
    model = GroupTransformer(31, d_model=16, n_heads=2, d_head=8, d_mlp=32, seed=0)
    embedding = model.embed.weight.detach().double().numpy()  # [32, 16]
    isolated = isolate_circle(model, make_group("C31"), 4).embed.weight.detach().double().numpy()
    spectrum = np.fft.rfft(embedding[:31], axis=0)  # [16 frequencies, 16]
    kept = np.zeros_like(spectrum)
    kept[[0, 4]] = spectrum[[0, 4]]
    np.testing.assert_allclose(isolated[:31], np.fft.irfft(kept, n=31, axis=0), atol=1e-6)  # float64 reference
    np.testing.assert_array_equal(isolated[31], embedding[31])  # "=" unchanged
    assert np.array_equal(model.embed.weight.detach().double().numpy(), embedding)  # the model is left alone


def test_per_circle_diagnostics_find_the_pizza_that_the_whole_model_calls_mixed():
    """Exact pizzas of frequencies 3 and 5 with their accompanying pizzas (6, 10): each circle's correct
    logit depends on the distance, their sum hardly does, so the whole model reads distance-blind."""
    group = make_group("C31")
    pizza = _n31_pizzas_with_accompaniment()
    assert embedding_key_frequencies(pizza, group) == (3, 5, 6, 10)
    assert gradient_symmetricity(pizza, group) == pytest.approx(1.0, abs=1e-6)
    assert distance_irrelevance(pizza, group) > 0.65  # whole model: symmetric yet distance-blind
    assert classify_algorithm(gradient_symmetricity(pizza, group), distance_irrelevance(pizza, group)) == "mixed"
    circles = circle_diagnostics(pizza, group)
    assert list(circles.frequency) == [3, 5, 6, 10] and set(circles.algorithm) == {"pizza"}
    assert (circles.distance_irrelevance < 0.3).all()
    result = diagnose(pizza, group)
    assert (result["whole_model_algorithm"], result["algorithm"]) == ("mixed", "pizza")
    assert result["circle_algorithms"] == ("pizza",) * 4


def test_per_circle_diagnostics_keep_a_clock_a_clock_and_flag_a_clock_beside_a_pizza():
    group = make_group("C31")
    clock = _CircleModel(31, [(3, "clock"), (5, "clock"), (7, "clock")])
    circles = circle_diagnostics(clock, group)
    assert set(circles.algorithm) == {"clock"} and (circles.gradient_symmetricity < 0.5).all()
    assert circles.distance_irrelevance.to_numpy() == pytest.approx(1.0)  # a clock's logit ignores a - b
    assert distance_irrelevance(clock, group) == pytest.approx(1.0)
    assert diagnose(clock, group)["algorithm"] == "clock"
    both = _CircleModel(31, [(3, "clock"), (5, "pizza")])
    result = diagnose(both, group)
    assert result["circle_algorithms"] == ("clock", "pizza") and result["algorithm"] == "mixed"


def test_centred_correct_logits_ignore_a_prior_over_answers_and_a_shift_per_pair():
    n = 11
    w = 2 * math.pi * 3 / n
    pizza = _FixedLogits(n, lambda a, b, c: torch.abs(torch.cos(w * (a - b) / 2)) * torch.cos(w * (a + b - c)))
    shifted = _FixedLogits(n, lambda a, b, c: pizza.function(a, b, c) + torch.sin(2 * w * c) + a * b / 7)
    group = make_group(f"C{n}")
    np.testing.assert_allclose(correct_logits(shifted, group, centred=True),
                               correct_logits(pizza, group, centred=True), atol=1e-12)
    assert distance_irrelevance(shifted, group, centred=True) == pytest.approx(0.0, abs=1e-12)
    assert distance_irrelevance(shifted, group) > 0.5  # raw: the prior reads as a dependence on the sum


def test_classify_circles_rule_and_errors():
    assert classify_circles(["pizza"] * 3) == "pizza" and classify_circles(["clock", "clock"]) == "clock"
    assert classify_circles(["pizza", "mixed"]) == "mixed" and classify_circles([]) == "mixed"
    _one_line_error(lambda: classify_circles(["pizza", "pie"]), "pie", "clock, pizza, mixed")
    model = GroupTransformer(31, d_model=16, n_heads=2, d_head=8, d_mlp=32)
    _one_line_error(lambda: isolate_circle(model, make_group("C31"), 16), "frequency", "15")
