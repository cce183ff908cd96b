"""Circuits on a hand-built transformer whose circuit is known: layer 0 head 0 is a previous-token head,
layer 1 head 0 an induction head by K-composition with it, every other head and MLP writes nothing.

Residual stream, in blocks of +-1 pairs (each written vector has zero mean, so a LayerNorm only rescales it):
TOK (token id), POS (position), PREV (the previous token, written by L0H0), OUT (the predicted token, written
by L1H0 and read by the unembedding)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from universality.circuits import (
    ROLES, activation_patching, attribution_patching, circuits_table, classify_heads, head_role_scores,
    heads_with_role, permute_heads, rank_correlation,
)
from universality.circuits._patching import top_components
from universality.circuits._reference import set_head
from universality.config import IOIConfig, LanguageConfig, ModelConfig, TrainConfig
from universality.errors import UniversalityError
from universality.models import TinyAdapter, TinyTransformer
from universality.neurons._heads import induction_tokens
from universality.pipeline._run import trained_inputs
from universality.tasks import IOITask, SyntheticLanguage, logit_difference
from universality.train import training_batches

torch.set_num_threads(1)

VOCAB, N_CTX, HEADS = 16, 12, 2
D_MODEL = 6 * VOCAB + 2 * N_CTX  # TOK, POS, PREV, OUT blocks of pairs
SHARP = 4.0  # query gain: attention logits of 10-15 on the matching key, so patterns are nearly one-hot
TOK, POS, PREV, OUT = 0, 2 * VOCAB, 2 * VOCAB + 2 * N_CTX, 4 * VOCAB + 2 * N_CTX
LANGUAGE = LanguageConfig(seq_len=N_CTX, n_classes=2, tokens_per_class=3, n_bracket_types=0, position_period=12,
                          repeat_len=2)


def _pair(block: int, index: int) -> torch.Tensor:
    """[d_model]: +1 at block + 2 index, -1 at block + 2 index + 1."""
    v = torch.zeros(D_MODEL)
    v[block + 2 * index], v[block + 2 * index + 1] = 1.0, -1.0
    return v


def _reader(block: int, count: int, scale: float, shift: int = 0) -> torch.Tensor:
    """[d_model, d_head]: column index + shift reads pair `index` of `block` (x . pair / 2 * scale)."""
    w = torch.zeros(D_MODEL, D_MODEL // HEADS)
    for index in range(count):
        if 0 <= index + shift < w.shape[1]:
            w[:, index + shift] = _pair(block, index) * scale / 2
    return w


def analytic_model(sharp: float = SHARP) -> TinyTransformer:
    model = TinyTransformer(ModelConfig(d_model=D_MODEL, n_layers=2, n_heads=HEADS, d_mlp=4, activation="relu"),
                            vocab_size=VOCAB, n_ctx=N_CTX, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for ln in [model.ln_final] + [b.ln1 for b in model.blocks] + [b.ln2 for b in model.blocks]:
            ln.weight.fill_(1.0)
        model.embed.weight.copy_(torch.stack([_pair(TOK, t) for t in range(VOCAB)]))
        model.pos_embed.weight.copy_(torch.stack([_pair(POS, p) for p in range(N_CTX)]))
        model.unembed.weight.copy_(torch.stack([_pair(OUT, t) for t in range(VOCAB)]) * 4)
    # LayerNorm scales a sum of k unit pairs by sqrt(d_model / (2 k)): 2 pairs into layer 0, 3 into layer 1
    c0, c1 = (D_MODEL / 4) ** 0.5, (D_MODEL / 6) ** 0.5
    back0, back1 = torch.zeros(D_MODEL // HEADS, D_MODEL), torch.zeros(D_MODEL // HEADS, D_MODEL)
    for t in range(VOCAB):
        back0[t] = _pair(PREV, t) / c0
        back1[t] = _pair(OUT, t) / c1
    # L0H0: query position p, key position p - 1 (key column j + 1 for position j); copies TOK into PREV
    set_head(model, 0, 0, W_Q=_reader(POS, N_CTX, sharp), W_K=_reader(POS, N_CTX, 1.0, shift=1),
             W_V=_reader(TOK, VOCAB, 1.0), W_O=back0)
    # L1H0: query TOK t, key PREV t (K-composition with L0H0); copies the key's TOK into OUT
    set_head(model, 1, 0, W_Q=_reader(TOK, VOCAB, sharp), W_K=_reader(PREV, VOCAB, 1.0), W_V=_reader(TOK, VOCAB, 1.0),
             W_O=back1)
    return model.eval()


@pytest.fixture(scope="module")
def adapter():
    return TinyAdapter(analytic_model(), bos_token_id=0)


@pytest.fixture(scope="module")
def prompts():
    return IOITask(SyntheticLanguage(LANGUAGE), IOIConfig(template_len=8)).prompts(64, seed=0)


def _induction_pair(batch: int = 32, half: int = 5):
    """clean [BOS, r, r] and corrupt [BOS, r', r], and the metric: mean logit of the induction answer r_{j+1}
    over the second half."""
    clean = induction_tokens(batch, half, VOCAB, bos_token_id=0, seed=1)
    corrupt = clean.clone()
    corrupt[:, 1:1 + half] = induction_tokens(batch, half, VOCAB, bos_token_id=0, seed=2)[:, 1:1 + half]
    queries = torch.arange(1 + half, 2 * half)  # second-half positions with a next token

    def metric(logits):
        answers = clean[:, queries + 1]  # [batch, half - 1]
        return logits[:, queries].gather(-1, answers[..., None]).squeeze(-1).mean(dim=1)  # [batch]
    return clean, corrupt, metric


def test_analytic_model_predicts_the_induction_answer(adapter):
    clean, _, _ = _induction_pair()
    logits = adapter.logits(clean)
    predicted = logits[:, 6:10].argmax(-1)
    assert (predicted == clean[:, 7:11]).float().mean() > 0.85  # misses: a token repeated within a half


def test_hand_built_heads_get_their_roles(adapter, prompts):
    scores = head_role_scores(adapter, prompts)
    roles = classify_heads(scores)
    assert heads_with_role(roles, "previous_token") == [(0, 0)]
    assert heads_with_role(roles, "induction") == [(1, 0)]
    assert set(roles["role"]) == {"previous_token", "induction"}
    row = scores.set_index(["layer", "head"])
    assert row.loc[(0, 0), "previous_token"] > 0.95 and row.loc[(1, 0), "induction"] > 0.8
    # L1H0's OV copies the token it reads: on IO's residual it ranks IO first, never last
    assert row.loc[(1, 0), "copy"] == 1.0 and row.loc[(1, 0), "negative_copy"] == 0.0
    assert row.loc[(0, 1), "copy"] == 0.0 and row.loc[(1, 1), "copy"] == 0.0  # heads writing nothing copy nothing


def test_permuting_heads_moves_their_roles(adapter, prompts):
    swapped = TinyAdapter(permute_heads(adapter.model, [1, 0]), bos_token_id=0)
    roles = classify_heads(head_role_scores(swapped, prompts))
    assert heads_with_role(roles, "previous_token") == [(0, 1)]
    assert heads_with_role(roles, "induction") == [(1, 1)]
    table = circuits_table({0: adapter, 1: swapped}, prompts)
    assert set(zip(table["seed"], table["role"], table["layer"], table["head"])) == {
        (0, "previous_token", 0, 0), (0, "induction", 1, 0), (1, "previous_token", 0, 1), (1, "induction", 1, 1)}
    mine = table.set_index(["seed", "role"])
    assert mine.loc[(0, "induction"), "matched_head_in_other_seeds"] == "1:1.1"
    assert (table["same_role_in_other_seeds"] == 1).all() and (table["other_seeds"] == 1).all()


@pytest.fixture(scope="module")
def soft():
    """The same circuit with attention logits of about 3-4: soft patterns, where a first-order estimate holds."""
    return TinyAdapter(analytic_model(sharp=1.0), bos_token_id=0)


def test_attribution_patching_ranks_the_circuit_first_and_agrees_with_activation_patching(soft):
    adapter = soft
    clean, corrupt, metric = _induction_pair()
    attribution = attribution_patching(adapter, clean, corrupt, metric)
    effect = activation_patching(adapter, clean, corrupt, metric)
    circuit = {("head", 0, 0), ("head", 1, 0)}
    assert set(top_components(attribution, "attribution", 2)) == circuit
    assert set(top_components(effect, "effect", 2)) == circuit
    others = effect[~effect.apply(lambda r: (r["component"], r["layer"], r["head"]) in circuit, axis=1)]
    assert others["effect"].abs().max() < 1e-5  # heads and MLPs that write nothing change nothing
    assert (effect.set_index(["layer", "head"]).loc[[(0, 0), (1, 0)], "effect"] < -1).all()
    assert rank_correlation(attribution, effect) > 0.7
    subset = activation_patching(adapter, clean, corrupt, metric, heads=[(1, 0)], mlps=False)
    assert subset["effect"].iloc[0] == pytest.approx(effect.set_index(["layer", "head"]).loc[(1, 0), "effect"])


def test_saturated_attention_flips_the_upstream_heads_attribution_but_not_its_rank(adapter):
    """A known limit of attribution patching (Kramar et al. 2024, AtP*): through a saturated softmax the gradient
    sees almost none of the K-composition it breaks. The previous-token head's attribution gets the wrong sign,
    yet both circuit heads still lead by magnitude."""
    clean, corrupt, metric = _induction_pair()
    attribution = attribution_patching(adapter, clean, corrupt, metric).set_index(["layer", "head"])
    effect = activation_patching(adapter, clean, corrupt, metric).set_index(["layer", "head"])
    assert effect.loc[(0, 0), "effect"] < -5 and attribution.loc[(0, 0), "attribution"] > 0
    assert set(top_components(attribution.reset_index(), "attribution", 2)) == {("head", 0, 0), ("head", 1, 0)}
    assert rank_correlation(attribution.reset_index(), effect.reset_index(), absolute=True) > 0.7


def test_attribution_is_the_first_order_effect_of_a_small_corruption(adapter):
    """With the corrupted run a tiny step away (a scaled embedding), grad x delta equals the patching effect."""
    clean, _, metric = _induction_pair(batch=8)
    model = adapter.model
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        nudged.embed.weight.mul_(1.0 + 1e-3)
    edited = TinyAdapter(nudged, bos_token_id=0)
    # the same tokens through a nudged model stand in for a corruption: patch its activations into the clean model
    from universality.circuits._patching import run_components, z_site
    _, acts = run_components(edited, clean, [z_site(0), z_site(1)])
    logits, leaf = run_components(adapter, clean, [z_site(1)], grad=True)
    grad, = torch.autograd.grad(metric(logits).mean(), [leaf[z_site(1)]])
    estimate = float((grad * (acts[z_site(1)] - leaf[z_site(1)].detach())).sum())
    patched, _ = run_components(adapter, clean, [], replace={z_site(1): lambda v: acts[z_site(1)]})
    actual = float(metric(patched).mean() - metric(logits.detach()).mean())
    assert estimate == pytest.approx(actual, rel=0.05, abs=1e-6)


def test_ioi_prompts_hold_the_names_where_the_template_says(prompts):
    rows = torch.arange(len(prompts))
    assert (prompts.clean[rows, prompts.io_pos] == prompts.io).all()
    assert (prompts.clean[rows, prompts.s1_pos] == prompts.s).all()
    assert (prompts.clean[rows, prompts.s2_pos] == prompts.s).all()
    assert (prompts.corrupt[rows, prompts.s2_pos] == prompts.io).all()
    differs = prompts.clean != prompts.corrupt
    assert (differs.sum(dim=1) == 1).all() and (prompts.io != prompts.s).all()
    assert 0 < float((prompts.io_pos < prompts.s1_pos).float().mean()) < 1  # both ABBA and BABA
    logits = torch.zeros(len(prompts), prompts.clean.shape[1], VOCAB)
    logits[rows, -1, prompts.io] = 2.0
    assert torch.equal(logit_difference(logits, prompts), torch.full((len(prompts),), 2.0))


def test_task_mix_is_off_by_default_and_replaces_only_its_rows():
    language = SyntheticLanguage(LANGUAGE)
    plain = next(iter(training_batches(language, TrainConfig(steps=2, batch_size=4), seed=0)))
    mixed = next(iter(training_batches(language, TrainConfig(steps=2, batch_size=4, ioi_fraction=0.5,
                                                             ioi=IOIConfig(template_len=8)), seed=0)))
    assert torch.equal(plain[2:], mixed[2:]) and not torch.equal(plain[:2], mixed[:2])
    assert (mixed[:, 0] == 0).all()
    assert "ioi" not in trained_inputs(TrainConfig()) and "ioi" in trained_inputs(TrainConfig(ioi_fraction=0.1))


def _one_line_error(fn, *match):
    with pytest.raises(UniversalityError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and all(m in message for m in match), message


def test_bad_input_raises_one_line_errors(adapter, prompts):
    roles = classify_heads(head_role_scores(adapter, prompts))
    _one_line_error(lambda: heads_with_role(roles, "name_mover", model="analytic"), "no name_mover head",
                    "previous_token, induction")
    _one_line_error(lambda: heads_with_role(roles, "mover"), "unknown head role", ", ".join(ROLES))
    language = SyntheticLanguage(LANGUAGE)
    _one_line_error(lambda: IOITask(language, names=[1, 99]), "IOI names")
    _one_line_error(lambda: IOITask(language, IOIConfig(names_class=5)), "names_class 5")
    _one_line_error(lambda: IOITask(language, IOIConfig(template_len=20)), "template_len 20")
    big = SyntheticLanguage(LanguageConfig(seq_len=N_CTX, n_classes=4, tokens_per_class=8, position_period=12,
                                           repeat_len=2))
    far = IOITask(big, IOIConfig(names_class=3, template_len=8)).prompts(4, seed=0)  # names 25..32 >= VOCAB
    _one_line_error(lambda: head_role_scores(adapter, far), "16 tokens")
    clean, corrupt, metric = _induction_pair(batch=4)
    _one_line_error(lambda: attribution_patching(adapter, clean, corrupt[:2], metric), "one shape")
    _one_line_error(lambda: attribution_patching(adapter, clean, corrupt, lambda logits: logits), "metric")
    _one_line_error(lambda: activation_patching(adapter, clean, corrupt, metric, heads=[(2, 0)]), "head (2, 0)")


def test_classify_heads_reads_each_role_from_its_score():
    scores = pd.DataFrame({"layer": [0, 1, 1], "head": [0, 0, 1], "previous_token": [0.1] * 3,
                           "duplicate_token": [0.9, 0.0, 0.0], "induction": [0.0] * 3, "attn_io": [0.0, 0.6, 0.5],
                           "attn_s1": [0.0] * 3, "attn_s2": [0.0] * 3, "copy": [0.0, 0.9, 0.0],
                           "negative_copy": [0.0, 0.0, 0.8], "s_inhibition": [0.4, float("nan"), float("nan")]})
    roles = classify_heads(scores)
    assert list(zip(roles["role"], roles["layer"], roles["head"])) == [
        ("duplicate_token", 0, 0), ("s_inhibition", 0, 0), ("name_mover", 1, 0), ("negative_name_mover", 1, 1)]
    assert roles["score"].tolist() == pytest.approx([0.9, 0.4, 0.54, 0.4])


def test_a_language_run_with_the_task_writes_circuit_tables_and_the_report_grid(tmp_path):
    """`train.ioi_fraction` > 0: per seed the task's scores, every head's attribution and the roles matched
    across seeds, in tables and in the report (the circuit step of a language run)."""
    import tomllib
    import pandas as pd
    from universality.api import run_experiment
    from universality.config import parse_config
    from test_pipeline import SMALL
    text = (SMALL.replace("[train]\n", "[train]\nthreads = 1\nioi_fraction = 0.5\n")
            + "[calibration]\nenabled = false\n[similarity]\nenabled = false\n[posterior]\nenabled = false\n")
    run = run_experiment(parse_config(tomllib.loads(text)), runs_dir=tmp_path)
    tables = {name: pd.read_parquet(run.run_dir / "tables" / f"{name}.parquet")
              for name in ("ioi", "circuits", "circuit_attribution")}
    assert sorted(tables["ioi"].seed) == [0, 1, 2] and tables["ioi"].accuracy.between(0, 1).all()
    attribution = tables["circuit_attribution"]
    assert len(attribution[attribution.component == "head"]) == 3 * 2 * 2  # seeds x layers x heads
    # 4 heads per seed, so all are checked by activation patching, as is every MLP
    assert attribution["effect"].notna().all() and tables["ioi"]["attribution_spearman"].between(-1, 1).all()
    assert set(tables["circuits"].columns) >= {"seed", "role", "layer", "head", "score", "matched_head_in_other_seeds"}
    html = (run.run_dir / "report.html").read_text()
    assert "Circuits across seeds" in html and (run.run_dir / "plots" / "circuits.png").is_file()


def test_the_run_checks_attribution_on_the_largest_heads_and_as_many_drawn_with_its_seed():
    from universality.pipeline._circuits import CHECKED_HEADS, _checked_heads
    layers, heads = 5, 8
    table = pd.DataFrame({"component": ["head"] * layers * heads + ["mlp"] * layers,
                          "layer": [l for l in range(layers) for _ in range(heads)] + list(range(layers)),
                          "head": list(range(heads)) * layers + [-1] * layers,
                          "attribution": np.r_[np.linspace(-1, 1, layers * heads), np.full(layers, 9.0)]})
    picked = _checked_heads(table, seed=3)
    assert len(set(picked)) == 2 * CHECKED_HEADS and picked == sorted(picked)
    heads_only = table[table.component == "head"]
    largest = heads_only.assign(size=heads_only.attribution.abs()).nlargest(CHECKED_HEADS, "size")
    assert set(zip(largest["layer"], largest["head"])) <= set(picked)
    assert _checked_heads(table, seed=3) == picked != _checked_heads(table, seed=4)
