"""Clock or pizza (Zhong et al. 2023): the attention rate, the diagnostics and the classification."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from universality.algorithms import (algorithm_fractions, attention_rate_sweep, classify_algorithm, correct_logits,
                                     distance_irrelevance, embedding_key_frequencies, gradient_symmetricity)
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
    """Ground truth: one seed on C_31 (defaults of `attention_rate_sweep`) at attention rate 1 and 0."""
    sweep = attention_rate_sweep(31, [1.0, 0.0], [2])
    clock, pizza = sweep.iloc[0], sweep.iloc[1]
    assert (clock.test_accuracy, pizza.test_accuracy) == (1.0, 1.0)
    assert clock.algorithm == "clock" and clock.gradient_symmetricity < 0.5 and clock.distance_irrelevance > 0.9
    assert pizza.algorithm == "pizza" and pizza.gradient_symmetricity == pytest.approx(1.0, abs=1e-6)
    assert pizza.distance_irrelevance < 0.45
    assert len(clock.key_frequencies) >= 1 and len(pizza.key_frequencies) >= 1


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
    assert set(algorithms.algorithm) <= {"clock", "pizza", "mixed"}
    assert (algorithms[algorithms.attention_rate == 0.0].gradient_symmetricity > 0.999).all()  # a sum, by construction
    fractions = pd.read_parquet(run.run_dir / "tables" / "algorithm_fractions.parquet")
    assert list(fractions.attention_rate) == [0.0, 1.0] and (fractions.seeds == 2).all()
    assert "Clock or pizza?" in (run.run_dir / "report.html").read_text()
