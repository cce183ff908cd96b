"""Loading SAEs other libraries trained. Each format's files are written here from the library's documented
layout (d_in 6, 16 latents, seeded random weights); the loaded SAE must hold the same weights after
orientation and encode exactly as the library's own formula, written out below."""

import json

import pytest
import torch
from safetensors.torch import save_file

from universality.errors import UniversalityError
from universality.saes import SAE, load, save

D_IN, LATENTS = 6, 16
ATOL = 1e-5  # float32 rounding of the same sums taken in another order


def _weights(seed: int = 0, latents: int = LATENTS) -> dict[str, torch.Tensor]:
    """Random weights in `SAE`'s orientation: W_enc, W_dec [latents, d_in]."""
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(latents, D_IN, generator=g), "b_enc": 0.5 * torch.randn(latents, generator=g),
            "W_dec": torch.randn(latents, D_IN, generator=g), "b_dec": 0.5 * torch.randn(D_IN, generator=g)}


X = torch.randn(40, D_IN, generator=torch.Generator().manual_seed(99))


def _pre(w, x=X, centred=True, W_enc=None, b_enc=None):
    """[tokens, latents] pre-activations x W_enc^T + b_enc, on x - b_dec when `centred`."""
    x = x - w["b_dec"] if centred else x
    return x @ (w["W_enc"] if W_enc is None else W_enc).T + (w["b_enc"] if b_enc is None else b_enc)


def _topk(pre, k):
    """Per token, relu(pre) where pre is among its k largest (ties have probability 0 here)."""
    kth = pre.sort(dim=1, descending=True).values[:, k - 1:k]
    return torch.relu(pre) * (pre >= kth)


def _gated(x_centred, W_gate, b_gate, r_mag, b_mag):
    """Rajamanoharan et al. 2024: 1[W_gate x + b_gate > 0] * relu(exp(r_mag) W_gate x + b_mag)."""
    gate = x_centred @ W_gate.T + b_gate > 0
    return gate * torch.relu(x_centred @ (W_gate * r_mag.exp()[:, None]).T + b_mag)


def _assert_weights(sae, w, *, keys=("W_enc", "b_enc", "W_dec", "b_dec")):
    assert sae.W_enc.dtype == torch.float32
    for key in keys:
        assert torch.equal(getattr(sae, key), w[key]), key


def _write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def _saelens(directory, cfg, tensors):
    _write_json(directory / "cfg.json", cfg)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "sae_weights.safetensors"))
    return directory


def _saelens_tensors(w, **extra):
    """SAELens layout: W_enc [d_in, d_sae], W_dec [d_sae, d_in]."""
    return {"W_enc": w["W_enc"].T, "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"], **extra}


SAELENS_6 = {"architecture": "standard", "d_in": D_IN, "d_sae": LATENTS, "dtype": "float32", "device": "cpu",
             "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
             "metadata": {"sae_lens_version": "6.18.0", "model_name": "tiny", "hook_name": "blocks.1.hook_resid_post"}}
SAELENS_5 = {"architecture": "standard", "d_in": D_IN, "d_sae": LATENTS, "dtype": "float32", "device": "cpu",
             "model_name": "tiny", "hook_name": "blocks.0.hook_resid_pre", "hook_layer": 0, "hook_head_index": None,
             "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}, "apply_b_dec_to_input": False,
             "finetuning_scaling_factor": False, "sae_lens_training_version": "4.4.1", "prepend_bos": True,
             "normalize_activations": "none", "context_size": 128, "dataset_path": "x"}
SAELENS_2 = {"d_in": D_IN, "d_sae": LATENTS, "expansion_factor": 4, "hook_point": "blocks.2.hook_resid_pre",
             "hook_point_layer": 2, "hook_point_head_index": None, "activation_fn": "relu",
             "apply_b_dec_to_input": True, "normalize_activations": False, "model_name": "gelu-2l"}


def test_saelens_6_standard_has_the_stored_weights_and_relu_encode(tmp_path):
    w = _weights()
    sae = load(_saelens(tmp_path, SAELENS_6, _saelens_tensors(w)))
    _assert_weights(sae, w)
    assert sae.activation == "relu" and sae.subtract_decoder_bias
    torch.testing.assert_close(sae.encode(X), torch.relu(_pre(w)), rtol=0, atol=ATOL)
    assert sae.metadata["format"] == "saelens" and sae.metadata["hookpoint"] == "blocks.1.hook_resid_post"
    assert sae.metadata["path"] == str(tmp_path.resolve()) and sae.metadata["model"] == "tiny"


def test_saelens_pre_6_topk_config_reads_k_from_activation_fn_kwargs(tmp_path):
    w = _weights(1)
    sae = load(_saelens(tmp_path, SAELENS_5, _saelens_tensors(w)) / "cfg.json")
    _assert_weights(sae, w)
    assert (sae.activation, sae.k, sae.subtract_decoder_bias) == ("topk", 3, False)
    torch.testing.assert_close(sae.encode(X), _topk(_pre(w, centred=False), 3), rtol=0, atol=ATOL)
    assert sae.metadata["hookpoint"] == "blocks.0.hook_resid_pre"


def test_saelens_2_decode_scaling_factor_is_folded_into_the_decoder(tmp_path):
    w = _weights(2)
    factor = torch.rand(LATENTS, generator=torch.Generator().manual_seed(3)) + 0.5
    sae = load(_saelens(tmp_path, SAELENS_2, _saelens_tensors(w, scaling_factor=factor)))
    acts = torch.relu(_pre(w))
    torch.testing.assert_close(sae.encode(X), acts, rtol=0, atol=ATOL)
    torch.testing.assert_close(sae(X), (acts * factor) @ w["W_dec"] + w["b_dec"], rtol=0, atol=ATOL)
    assert sae.metadata["hookpoint"] == "blocks.2.hook_resid_pre"


def test_saelens_jumprelu_threshold_is_read_back(tmp_path):
    w = _weights(4)
    threshold = torch.linspace(-0.5, 2.0, LATENTS)  # a negative one acts as 0 under relu(pre) * 1[pre > t]
    cfg = {**SAELENS_6, "architecture": "jumprelu"}
    sae = load(_saelens(tmp_path, cfg, _saelens_tensors(w, threshold=threshold)))
    _assert_weights(sae, w)
    assert sae.activation == "jumprelu" and torch.equal(sae.threshold, threshold.clamp_min(0))
    pre = _pre(w)
    torch.testing.assert_close(sae.encode(X), torch.relu(pre) * (pre > threshold), rtol=0, atol=ATOL)


def test_saelens_gated_encodes_exactly_as_its_gate_and_magnitude(tmp_path):
    w, g = _weights(5), torch.Generator().manual_seed(6)
    b_gate, r_mag, b_mag = torch.randn(LATENTS, generator=g), 0.3 * torch.randn(LATENTS, generator=g), \
        torch.randn(LATENTS, generator=g)
    tensors = {"W_enc": w["W_enc"].T, "b_gate": b_gate, "r_mag": r_mag, "b_mag": b_mag, "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}
    sae = load(_saelens(tmp_path, {**SAELENS_6, "architecture": "gated"}, tensors))
    _assert_weights(sae, w, keys=("W_dec", "b_dec"))
    expected = _gated(X - w["b_dec"], w["W_enc"], b_gate, r_mag, b_mag)
    assert 0 < int((expected > 0).sum()) < expected.numel()
    torch.testing.assert_close(sae.encode(X), expected, rtol=0, atol=ATOL)


def test_saelens_topk_rescaled_by_decoder_norm_encodes_and_decodes_as_saelens(tmp_path):
    w = _weights(7)
    cfg = {**SAELENS_6, "architecture": "topk", "k": 4, "rescale_acts_by_decoder_norm": True}
    sae = load(_saelens(tmp_path, cfg, _saelens_tensors(w)))
    norm = w["W_dec"].norm(dim=1)
    acts = _topk(_pre(w) * norm, 4)  # SAELens ranks and returns pre * |W_dec row|
    assert sae.k == 4
    torch.testing.assert_close(sae.encode(X), acts, rtol=0, atol=ATOL)
    torch.testing.assert_close(sae(X), (acts / norm) @ w["W_dec"] + w["b_dec"], rtol=0, atol=ATOL)


def test_saelens_batchtopk_checkpoint_keeps_k_and_its_global_threshold(tmp_path):
    w = _weights(8)
    cfg = {**SAELENS_6, "architecture": "batchtopk", "k": 5}
    sae = load(_saelens(tmp_path, cfg, _saelens_tensors(w, topk_threshold=torch.tensor(0.75, dtype=torch.float64))))
    assert (sae.activation, sae.k, float(sae.threshold)) == ("batchtopk", 5, 0.75)
    pre = _pre(w)
    torch.testing.assert_close(sae.encode(X), torch.relu(pre) * (pre > 0.75), rtol=0, atol=ATOL)


def test_saelens_input_norm_factor_of_a_checkpoint_is_folded(tmp_path):
    w = _weights(9)
    _write_json(tmp_path / "activation_scaler.json", {"scaling_factor": 2.5})
    sae = load(_saelens(tmp_path, {**SAELENS_6, "normalize_activations": "expected_average_only_in"},
                        _saelens_tensors(w)))
    acts = torch.relu(_pre(w, x=2.5 * X))
    torch.testing.assert_close(sae.encode(X), acts, rtol=0, atol=ATOL)
    torch.testing.assert_close(sae(X), (acts @ w["W_dec"] + w["b_dec"]) / 2.5, rtol=0, atol=ATOL)


SPARSIFY = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": LATENTS,
            "k": 4, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D_IN}


def _sparsify(directory, cfg, tensors):
    _write_json(directory / "cfg.json", cfg)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "sae.safetensors"))
    return directory


def _sparsify_tensors(w, dtype=torch.float32):
    return {"encoder.weight": w["W_enc"].to(dtype), "encoder.bias": w["b_enc"].to(dtype),
            "W_dec": w["W_dec"].to(dtype), "b_dec": w["b_dec"].to(dtype)}


def test_sparsify_bfloat16_loads_as_float32_topk_named_by_its_hookpoint(tmp_path):
    w = {key: value.to(torch.bfloat16).float() for key, value in _weights(10).items()}
    sae = load(_sparsify(tmp_path / "layers.3", SPARSIFY, _sparsify_tensors(w, torch.bfloat16)))
    _assert_weights(sae, w)
    assert (sae.activation, sae.k, sae.subtract_decoder_bias) == ("topk", 4, True)
    torch.testing.assert_close(sae.encode(X), _topk(_pre(w), 4), rtol=0, atol=ATOL)
    assert sae.metadata["format"] == "sparsify" and sae.metadata["hookpoint"] == "layers.3"


def test_sparsify_latents_from_expansion_factor_when_num_latents_is_0(tmp_path):
    w = _weights(11, latents=2 * D_IN)
    sae = load(_sparsify(tmp_path, {**SPARSIFY, "num_latents": 0, "expansion_factor": 2}, _sparsify_tensors(w)))
    assert sae.latents == 2 * D_IN
    _assert_weights(sae, w)


def test_a_transposed_weight_is_oriented_by_the_config_sizes(tmp_path):
    w = _weights(12)
    sae = load(_sparsify(tmp_path, SPARSIFY, {**_sparsify_tensors(w), "W_dec": w["W_dec"].T}))
    _assert_weights(sae, w)


def _dl(directory, trainer, state):
    _write_json(directory / "config.json", {"trainer": {"activation_dim": D_IN, "dict_size": LATENTS, "layer": 3,
                                                        "lm_name": "EleutherAI/pythia-70m-deduped",
                                                        "submodule_name": "resid_post_layer_3", **trainer},
                                            "buffer": {"ctx_len": 128}})
    torch.save(state, directory / "ae.pt")
    return directory


_G = torch.Generator().manual_seed(13)
GATE = {"gate_bias": torch.randn(LATENTS, generator=_G), "r_mag": 0.3 * torch.randn(LATENTS, generator=_G),
        "mag_bias": torch.randn(LATENTS, generator=_G)}
THRESHOLD = torch.linspace(-0.5, 2.0, LATENTS)
K = {"k": torch.tensor(4, dtype=torch.int32)}

# dict_class -> (state dict from weights w, reference encode from w); topk classes have k 4 in config.json
DICTIONARY_LEARNING = {
    "AutoEncoder": (lambda w: {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"],
                               "decoder.weight": w["W_dec"].T, "bias": w["b_dec"]},
                    lambda w: torch.relu(_pre(w))),
    "AutoEncoderNew": (lambda w: {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"],
                                  "decoder.weight": w["W_dec"].T, "decoder.bias": w["b_dec"]},
                       lambda w: torch.relu(_pre(w, centred=False))),
    "GatedAutoEncoder": (lambda w: {"encoder.weight": w["W_enc"], "decoder.weight": w["W_dec"].T,
                                    "decoder_bias": w["b_dec"], **GATE},
                         lambda w: _gated(X - w["b_dec"], w["W_enc"], GATE["gate_bias"], GATE["r_mag"],
                                          GATE["mag_bias"])),
    "JumpReluAutoEncoder": (lambda w: {"W_enc": w["W_enc"].T, "b_enc": w["b_enc"], "W_dec": w["W_dec"],
                                       "b_dec": w["b_dec"], "threshold": THRESHOLD},
                            lambda w: torch.relu(_pre(w, centred=False) * (_pre(w, centred=False) > THRESHOLD))),
    "AutoEncoderTopK": (lambda w: {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"],
                                   "decoder.weight": w["W_dec"].T, "b_dec": w["b_dec"], **K,
                                   "threshold": torch.tensor(-1.0)},
                        lambda w: _topk(_pre(w), 4)),
    "BatchTopKSAE": (lambda w: {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"],
                                "decoder.weight": w["W_dec"].T, "b_dec": w["b_dec"], **K,
                                "threshold": torch.tensor(0.7)},
                     lambda w: torch.relu(_pre(w)) * (torch.relu(_pre(w)) > 0.7)),
    "MatryoshkaBatchTopKSAE": (lambda w: {"W_enc": w["W_enc"].T, "b_enc": w["b_enc"], "W_dec": w["W_dec"],
                                          "b_dec": w["b_dec"], **K, "threshold": torch.tensor(0.7),
                                          "group_sizes": torch.tensor([4, 12])},
                               lambda w: torch.relu(_pre(w)) * (torch.relu(_pre(w)) > 0.7)),
}


@pytest.mark.parametrize("dict_class", DICTIONARY_LEARNING)
def test_dictionary_learning_class_has_its_weights_and_encodes_as_the_class(tmp_path, dict_class):
    w = _weights(14)
    state, reference = DICTIONARY_LEARNING[dict_class]
    sae = load(_dl(tmp_path, {"dict_class": dict_class, "k": 4}, state(w)) / "ae.pt")
    _assert_weights(sae, w, keys=("W_dec", "b_dec") if dict_class == "GatedAutoEncoder" else
                    ("W_enc", "b_enc", "W_dec", "b_dec"))
    expected = reference(w)
    assert 0 < int((expected > 0).sum()) < expected.numel()
    torch.testing.assert_close(sae.encode(X), expected, rtol=0, atol=ATOL)
    assert sae.metadata["format"] == "dictionary_learning" and sae.metadata["hookpoint"] == "resid_post_layer_3"
    if "TopK" in dict_class:
        assert sae.k == 4


def test_dictionary_learning_topk_of_july_2024_keeps_its_decoder_as_latent_rows(tmp_path):
    w = _weights(15)  # `decoder` an nn.Parameter [latents, d_in]; k only in config.json
    state = {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"], "decoder": w["W_dec"], "b_dec": w["b_dec"]}
    sae = load(_dl(tmp_path, {"dict_class": "AutoEncoderTopK", "k": 3}, state))
    _assert_weights(sae, w)
    torch.testing.assert_close(sae.encode(X), _topk(_pre(w), 3), rtol=0, atol=ATOL)


@pytest.mark.parametrize("activation, k, threshold", [
    ("relu", None, None), ("topk", 3, None), ("batchtopk", 3, torch.tensor(0.4)),
    ("jumprelu", None, torch.linspace(0, 1.5, LATENTS))])
def test_save_then_load_gives_the_same_sae(tmp_path, activation, k, threshold):
    w = _weights(16)
    sae = SAE(**{key: value.double() for key, value in w.items()}, activation=activation, k=k,
              threshold=threshold, subtract_decoder_bias=False, metadata={"hookpoint": "blocks.0.mlp.hook_post"})
    loaded = load(save(sae, tmp_path / "64-seed0"))
    assert sorted(p.name for p in (tmp_path / "64-seed0").iterdir()) == ["sae.json", "sae.safetensors"]
    _assert_weights(loaded, w)
    assert (loaded.activation, loaded.k, loaded.subtract_decoder_bias) == (activation, k, False)
    assert (loaded.threshold is None) == (threshold is None)
    if threshold is not None:
        assert torch.equal(loaded.threshold, threshold)
    assert loaded.metadata["hookpoint"] == "blocks.0.mlp.hook_post" and loaded.metadata["format"] == "universality"
    torch.testing.assert_close(loaded.encode(X), sae.to(torch.float32).encode(X), rtol=0, atol=0)


def test_save_refuses_metadata_that_is_not_json(tmp_path):
    sae = SAE(**_weights(), metadata={"when": object()})
    with pytest.raises(UniversalityError, match="not plain JSON"):
        save(sae, tmp_path)


class NotATensor:
    """Pickled into an ae.pt: weights_only=True must refuse to rebuild it."""


def _corrupt(directory, name):
    (directory / name).write_bytes(b"not this format")


def _bad(tmp_path, case):
    """Write bad case `case` under tmp_path; returns the path to load."""
    w = _weights()
    if case == "missing path":
        return tmp_path / "nowhere"
    if case == "empty directory":
        return tmp_path
    if case == "unrelated files":
        (tmp_path / "notes.txt").write_text("hi")
        return tmp_path
    if case == "SAEs one level down":
        _sparsify(tmp_path / "layers.0", SPARSIFY, _sparsify_tensors(w))
        return tmp_path
    if case == "missing weights file":
        _write_json(tmp_path / "cfg.json", SAELENS_6)
        return tmp_path
    if case == "missing config file":
        torch.save(DICTIONARY_LEARNING["AutoEncoder"][0](w), tmp_path / "ae.pt")
        return tmp_path
    if case == "several formats":
        _saelens(tmp_path, SAELENS_6, _saelens_tensors(w))
        save_file(_sparsify_tensors(w), str(tmp_path / "sae.safetensors"))
        return tmp_path
    if case == "unknown file":
        (tmp_path / "weights.bin").write_bytes(b"")
        return tmp_path / "weights.bin"
    if case == "NaN weight":
        w["W_dec"][2, 3] = float("nan")
        return _saelens(tmp_path, SAELENS_6, _saelens_tensors(w))
    if case == "zero width":
        return _saelens(tmp_path, {**SAELENS_6, "d_sae": 0}, _saelens_tensors(w))
    if case == "shape fits neither orientation":
        return _saelens(tmp_path, SAELENS_6, _saelens_tensors({**w, "W_dec": w["W_dec"][:15]}))
    if case == "k above the latent count":
        return _sparsify(tmp_path, {**SPARSIFY, "k": LATENTS + 1}, _sparsify_tensors(w))
    if case == "skip connection tensor":
        return _sparsify(tmp_path, SPARSIFY, {**_sparsify_tensors(w), "W_skip": torch.zeros(D_IN, D_IN)})
    if case == "sparsify transcoder":
        return _sparsify(tmp_path, {**SPARSIFY, "transcode": True}, _sparsify_tensors(w))
    if case == "sparsify groupmax":
        return _sparsify(tmp_path, {**SPARSIFY, "activation": "groupmax"}, _sparsify_tensors(w))
    if case == "SAELens transcoder":
        return _saelens(tmp_path, {**SAELENS_6, "architecture": "transcoder"}, _saelens_tensors(w))
    if case == "SAELens tanh-relu":
        return _saelens(tmp_path, {**SAELENS_2, "activation_fn": "tanh-relu"}, _saelens_tensors(w))
    if case == "SAELens layer_norm inputs":
        return _saelens(tmp_path, {**SAELENS_6, "normalize_activations": "layer_norm"}, _saelens_tensors(w))
    if case == "SAELens norm factor not stored":
        return _saelens(tmp_path, {**SAELENS_2, "normalize_activations": True}, _saelens_tensors(w))
    if case == "corrupt safetensors":
        _saelens(tmp_path, SAELENS_6, _saelens_tensors(w))
        _corrupt(tmp_path, "sae_weights.safetensors")
        return tmp_path
    if case == "config not JSON":
        _saelens(tmp_path, SAELENS_6, _saelens_tensors(w))
        _corrupt(tmp_path, "cfg.json")
        return tmp_path
    if case == "unknown dict_class":
        return _dl(tmp_path, {"dict_class": "CrossCoder"}, {})
    if case == "k buffer differs from config":
        return _dl(tmp_path, {"dict_class": "AutoEncoderTopK", "k": 5}, DICTIONARY_LEARNING["AutoEncoderTopK"][0](w))
    if case == "BatchTopK threshold never set":
        state = {**DICTIONARY_LEARNING["BatchTopKSAE"][0](w), "threshold": torch.tensor(-1.0)}
        return _dl(tmp_path, {"dict_class": "BatchTopKSAE", "k": 4}, state)
    if case == "training backup":
        return _dl(tmp_path, {"dict_class": "AutoEncoder"}, {"step": 10, "ae": {}, "optimizer": {}, "config": {}})
    if case == "pickled code":
        return _dl(tmp_path, {"dict_class": "AutoEncoder"}, {"encoder.weight": NotATensor()})
    if case == "our format, other version":
        save(SAE(**w), tmp_path)
        config = json.loads((tmp_path / "sae.json").read_text())
        _write_json(tmp_path / "sae.json", {**config, "version": 2})
        return tmp_path
    raise AssertionError(case)


# bad case -> what the one-line message must say (besides the file or directory it names)
BAD = {
    "missing path": ["nowhere", "no such file"],
    "empty directory": ["no SAE files found", "sae.json + sae.safetensors", "cfg.json + sae_weights.safetensors"],
    "unrelated files": ["no SAE files found"],
    "SAEs one level down": ["no SAE files found", "layers.0"],
    "missing weights file": ["incomplete SAE", "missing sae_weights.safetensors", "missing sae.safetensors"],
    "missing config file": ["incomplete SAE", "missing config.json"],
    "several formats": ["several SAE formats", "saelens", "sparsify"],
    "unknown file": ["weights.bin", "not a file of a known SAE format"],
    "NaN weight": ["sae_weights.safetensors", "W_dec has NaN"],
    "zero width": ["cfg.json", "d_sae is 0"],
    "shape fits neither orientation": ["sae_weights.safetensors", "W_dec has shape (15, 6)", "neither"],
    "k above the latent count": ["cfg.json", "k must be an integer in 1..16", "17"],
    "skip connection tensor": ["sae.safetensors", "'W_skip'", "cannot be represented"],
    "sparsify transcoder": ["cfg.json", "transcode is true"],
    "sparsify groupmax": ["cfg.json", "groupmax"],
    "SAELens transcoder": ["cfg.json", "'transcoder'"],
    "SAELens tanh-relu": ["cfg.json", "tanh-relu"],
    "SAELens layer_norm inputs": ["cfg.json", "layer_norm"],
    "SAELens norm factor not stored": ["cfg.json", "activation_scaler.json"],
    "corrupt safetensors": ["sae_weights.safetensors", "not a readable safetensors file"],
    "config not JSON": ["cfg.json", "not readable JSON"],
    "unknown dict_class": ["config.json", "CrossCoder", "AutoEncoderTopK"],
    "k buffer differs from config": ["ae.pt", "k buffer is 4", "k = 5"],
    "BatchTopK threshold never set": ["ae.pt", "threshold is -1"],
    "training backup": ["ae.pt", "mid-training backup"],
    "pickled code": ["ae.pt", "weights_only=True", "UnpicklingError"],
    "our format, other version": ["sae.json", "version 2"],
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_raises_one_line_naming_the_problem(tmp_path, case):
    path = _bad(tmp_path, case)
    with pytest.raises(UniversalityError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message
    for needle in BAD[case]:
        assert needle in message, message
