"""Loaders for SAEs other libraries trained: SAELens, EleutherAI sparsify, dictionary_learning.

Each reads one directory, checks every tensor against the sizes in its config and returns an `SAE`
(float32, `W_enc` / `W_dec` [latents, d_in]) whose `encode` equals the library's own encode. What cannot
be represented that way is refused in one line, never approximated:

| library             | files                                  | refused                                          |
|---------------------|----------------------------------------|--------------------------------------------------|
| SAELens 0.5 - 6.x   | cfg.json + sae_weights.safetensors     | transcoders, tanh-relu, per-input normalization  |
| sparsify            | <hookpoint>/cfg.json + sae.safetensors | transcoders, skip connections, groupmax, signed  |
| dictionary_learning | config.json + ae.pt                    | classes not in `DICT_CLASSES`, training backups  |

Exact rewrites (the encode output is unchanged): a gated SAE becomes a JumpReLU (`_gated_as_jumprelu`);
SAELens' `rescale_acts_by_decoder_norm`, its decode-side `scaling_factor` and a stored input norm
factor are folded into the weights.
"""

from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import UniversalityError, short_repr
from ._files import TensorFile, jump_threshold, read_json_object, read_safetensors, read_torch, size, topk_k
from ._sae import SAE

__all__ = ["load_saelens", "load_sparsify", "load_dictionary_learning", "SAELENS_ARCHITECTURES", "DICT_CLASSES"]

# SAELens architecture -> `SAE.activation`. gated: rewritten as a JumpReLU; batchtopk: training checkpoints
# (finished ones are saved as jumprelu); matryoshka_batchtopk encodes as batchtopk (its nested groups
# only shape the training loss)
SAELENS_ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "jumprelu",
                         "batchtopk": "batchtopk", "matryoshka_batchtopk": "batchtopk"}


def load_saelens(directory: Path) -> SAE:
    """A SAELens SAE: `cfg.json` (d_in, d_sae, architecture, ...) + `sae_weights.safetensors` with
    W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], and per architecture
    threshold [d_sae] (jumprelu), b_gate / b_mag / r_mag [d_sae] (gated, no b_enc), topk_threshold []
    (batchtopk training checkpoints; SAELens saves finished ones as jumprelu).

    Configs before 6.0 name things differently: `activation_fn_str` (or `activation_fn`) "topk" with
    `activation_fn_kwargs` {"k": k} under architecture "standard" is a top-k SAE; `hook_point` (before
    3.0) or `hook_name` instead of `metadata.hook_name`; `normalize_activations` a bool before 3.x.
    Decode multiplied latents by `scaling_factor` (before 3.0) or `finetuning_scaling_factor` [d_sae].
    """
    cfg_path, weights_path = directory / "cfg.json", directory / "sae_weights.safetensors"
    cfg = read_json_object(cfg_path)
    d_in, latents = size(cfg, "d_in", cfg_path), size(cfg, "d_sae", cfg_path)
    architecture = cfg.get("architecture", "standard")  # no such key before 3.x: every SAE was standard
    activation_fn = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))  # absent from 6.0 on
    if architecture == "standard" and activation_fn == "topk":
        architecture = "topk"
    if architecture not in SAELENS_ARCHITECTURES:
        raise UniversalityError(f"{cfg_path}: architecture {short_repr(architecture)} is not an SAE this loader "
                                f"reads (transcoders map one activation to another); it reads "
                                f"{', '.join(SAELENS_ARCHITECTURES)}")
    if activation_fn != "relu" and not (activation_fn == "topk" and architecture == "topk"):
        raise UniversalityError(f"{cfg_path}: activation_fn {short_repr(activation_fn)} for architecture "
                                f"{architecture!r} cannot be represented; only relu (and topk) can")
    activation = SAELENS_ARCHITECTURES[architecture]
    input_scale = _saelens_input_scale(cfg, cfg_path, directory)

    weights = read_safetensors(weights_path)
    W_enc = weights.matrix("W_enc", d_in, latents, rows="d_in")
    W_dec = weights.matrix("W_dec", d_in, latents, rows="latents")
    b_dec = weights.take("b_dec", (d_in,))
    k = threshold = None
    if architecture == "gated":
        W_enc, b_enc, threshold = _gated_as_jumprelu(W_enc, *(weights.take(key, (latents,))
                                                               for key in ("b_gate", "r_mag", "b_mag")))
    else:
        b_enc = weights.take("b_enc", (latents,))
    if architecture == "jumprelu":
        threshold = jump_threshold(weights.take("threshold", (latents,)))
    if activation in ("topk", "batchtopk"):
        kwargs = cfg.get("activation_fn_kwargs")  # before 6.0: {"k": k}
        k = topk_k(cfg.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None), latents, cfg_path)
        if cfg.get("rescale_acts_by_decoder_norm"):
            # SAELens ranks and returns pre * |W_dec row| and decodes acts / |W_dec row|: fold the norms in
            norm = W_dec.norm(dim=1)  # [latents]
            if not bool((norm > 0).all()):
                raise UniversalityError(f"{weights_path}: a W_dec row is zero, so rescale_acts_by_decoder_norm "
                                        "cannot be folded into the weights")
            W_enc, b_enc, W_dec = W_enc * norm[:, None], b_enc * norm, W_dec / norm[:, None]
    if architecture in ("batchtopk", "matryoshka_batchtopk"):
        threshold = jump_threshold(weights.take("topk_threshold", ()))
    for key in ("scaling_factor", "finetuning_scaling_factor"):  # decode: (acts * factor) @ W_dec
        if weights.has(key):
            W_dec = W_dec * weights.take(key, (latents,))[:, None]
    weights.check_all_taken(f"a SAELens {architecture} SAE")
    if input_scale is not None:  # encode(s x) and decode(.) / s, as SAELens' fold_activation_norm_scaling_factor
        W_enc, W_dec, b_dec = W_enc * input_scale, W_dec / input_scale, b_dec / input_scale

    # 6.0 moved the model's names into cfg["metadata"]; before 3.0 hook_name was hook_point
    info = {**cfg, **(cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {})}
    hookpoint = info.get("hook_name", info.get("hook_point"))
    reshape = info.get("reshape_activations", "hook_z" if "hook_z" in str(hookpoint) else "none")
    metadata = {"architecture": architecture, "hookpoint": hookpoint, "model": info.get("model_name"),
                "hook_head_index": info.get("hook_head_index", info.get("hook_point_head_index")),
                "reshape_activations": reshape if reshape != "none" else None,  # hook_z: [heads, d_head] flattened
                "sae_lens_version": info.get("sae_lens_version")}
    return SAE(W_enc, b_enc, W_dec, b_dec, activation, k, threshold,
               subtract_decoder_bias=bool(cfg.get("apply_b_dec_to_input", True)),
               metadata={key: value for key, value in metadata.items() if value is not None})


def _saelens_input_scale(cfg: dict, cfg_path: Path, directory: Path) -> float | None:
    """The factor SAELens multiplies inputs by before encoding (`normalize_activations`), or None."""
    mode = cfg.get("normalize_activations", "none")
    if mode in ("none", None, False):
        return None
    if mode in ("expected_average_only_in", True):  # True: the same, before 3.x
        # a training checkpoint keeps the factor beside it; finished SAEs have it folded in already
        scaler = directory / "activation_scaler.json"
        factor = read_json_object(scaler).get("scaling_factor") if scaler.is_file() else None
        if isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 0:
            return float(factor)
        raise UniversalityError(f"{cfg_path}: normalize_activations {mode!r} scales inputs by a dataset norm factor "
                                f"that is not in {directory.name} (no activation_scaler.json with a scaling_factor); "
                                "fold it with SAELens' fold_activation_norm_scaling_factor and save the SAE again")
    raise UniversalityError(f"{cfg_path}: normalize_activations {short_repr(mode)} normalizes each input at run "
                            "time, which an SAE of fixed weights cannot represent")


def _gated_as_jumprelu(W_gate: torch.Tensor, b_gate: torch.Tensor, r_mag: torch.Tensor,
                       b_mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A gated SAE (Rajamanoharan et al. 2024) as an exact JumpReLU: (W_enc, b_enc, threshold).

    Gated encode (x centred): 1[W_gate x + b_gate > 0] * relu(W_mag x + b_mag), W_mag = exp(r_mag) W_gate.
    The gate, multiplied by exp(r_mag) > 0, reads pre > b_mag - exp(r_mag) b_gate with pre = W_mag x + b_mag,
    so encode = relu(pre) * 1[pre > t]: a JumpReLU of W_mag, b_mag and threshold t.
    W_gate [latents, d_in]; b_gate, r_mag, b_mag [latents].
    """
    scale = r_mag.exp()
    return W_gate * scale[:, None], b_mag, jump_threshold(b_mag - scale * b_gate)


def load_sparsify(directory: Path) -> SAE:
    """An EleutherAI sparsify SAE, one directory per hookpoint (its name): `cfg.json` (d_in, k,
    num_latents or expansion_factor, ...) + `sae.safetensors` (often bfloat16) with encoder.weight
    [num_latents, d_in], encoder.bias [num_latents], W_dec [num_latents, d_in], b_dec [d_in].
    Encode: top-k of relu(encoder(x - b_dec)).
    """
    cfg_path, weights_path = directory / "cfg.json", directory / "sae.safetensors"
    cfg = read_json_object(cfg_path)
    for key, what in (("transcode", "a transcoder predicts another module's output from its input"),
                      ("skip_connection", "its skip connection W_skip adds a linear map of the input"),
                      ("signed", "a signed SAE keeps the top k pre-activations without a ReLU")):
        if cfg.get(key):
            raise UniversalityError(f"{cfg_path}: {key} is true: {what}, which an SAE cannot represent")
    if cfg.get("activation", "topk") != "topk":
        raise UniversalityError(f"{cfg_path}: activation {short_repr(cfg.get('activation'))} cannot be represented "
                                "(groupmax keeps the largest latent of each of k groups); only topk can")
    d_in = size(cfg, "d_in", cfg_path)
    latents = size(cfg, "num_latents", cfg_path) if cfg.get("num_latents") else \
        d_in * size(cfg, "expansion_factor", cfg_path)  # num_latents 0 (the default): d_in * expansion_factor
    k = topk_k(cfg.get("k"), latents, cfg_path)
    weights = read_safetensors(weights_path)
    W_enc = weights.matrix("encoder.weight", d_in, latents, rows="latents")
    b_enc = weights.take("encoder.bias", (latents,))
    W_dec = weights.matrix("W_dec", d_in, latents, rows="latents")
    b_dec = weights.take("b_dec", (d_in,))
    weights.check_all_taken("a sparsify top-k SAE")
    return SAE(W_enc, b_enc, W_dec, b_dec, "topk", k, metadata={"architecture": "topk", "hookpoint": directory.name})


class _Layout(NamedTuple):
    """Where one dictionary_learning class keeps its weights: (key, rows as stored) for each matrix."""
    W_enc: tuple[str, str]
    b_enc: str | None  # None: gated (its biases are read apart)
    W_dec: tuple[str, str]
    b_dec: str
    subtract_decoder_bias: bool  # encode(x - b_dec) or encode(x)
    activation: str


_LINEAR_ENC, _LINEAR_DEC = ("encoder.weight", "latents"), ("decoder.weight", "d_in")  # nn.Linear weights
_PARAM_ENC, _PARAM_DEC = ("W_enc", "d_in"), ("W_dec", "latents")  # plain nn.Parameter matrices
DICT_CLASSES = {
    "AutoEncoder": _Layout(_LINEAR_ENC, "encoder.bias", _LINEAR_DEC, "bias", True, "relu"),
    "AutoEncoderNew": _Layout(_LINEAR_ENC, "encoder.bias", _LINEAR_DEC, "decoder.bias", False, "relu"),
    "GatedAutoEncoder": _Layout(_LINEAR_ENC, None, _LINEAR_DEC, "decoder_bias", True, "jumprelu"),
    # apply_b_dec_to_input is an attribute, False unless set after loading: encode(x) is the saved behaviour
    "JumpReluAutoEncoder": _Layout(_PARAM_ENC, "b_enc", _PARAM_DEC, "b_dec", False, "jumprelu"),
    "AutoEncoderTopK": _Layout(_LINEAR_ENC, "encoder.bias", _LINEAR_DEC, "b_dec", True, "topk"),
    "BatchTopKSAE": _Layout(_LINEAR_ENC, "encoder.bias", _LINEAR_DEC, "b_dec", True, "batchtopk"),
    # encodes as BatchTopKSAE with all groups active (the default)
    "MatryoshkaBatchTopKSAE": _Layout(_PARAM_ENC, "b_enc", _PARAM_DEC, "b_dec", True, "batchtopk"),
}


def load_dictionary_learning(directory: Path) -> SAE:
    """A dictionary_learning (saprmarks) SAE: `config.json` {"trainer": {"dict_class", "activation_dim",
    "dict_size", "k", ...}} + `ae.pt`, the state dict of the class `DICT_CLASSES` names (read with
    weights_only=True). AutoEncoder: encoder.weight [latents, d_in], encoder.bias, decoder.weight
    [d_in, latents], bias [d_in]. JumpReluAutoEncoder: W_enc [d_in, latents], b_enc, W_dec [latents, d_in],
    b_dec, threshold. Top-k classes add the buffers k [] and threshold []; AutoEncoderTopK from July 2024
    kept its decoder as `decoder` [latents, d_in]. Weights are taken as saved: the library's
    `from_pretrained(normalize_decoder=True)` rescales latents, this does not.
    """
    config_path, weights_path = directory / "config.json", directory / "ae.pt"
    trainer = read_json_object(config_path).get("trainer")
    if not isinstance(trainer, dict):
        raise UniversalityError(f"{config_path}: no 'trainer' object (dictionary_learning writes "
                                '{"trainer": {"dict_class": ..., "activation_dim": ..., "dict_size": ...}})')
    dict_class = trainer.get("dict_class")
    if dict_class not in DICT_CLASSES:
        raise UniversalityError(f"{config_path}: dict_class {short_repr(dict_class)} is not one of "
                                f"{', '.join(DICT_CLASSES)}")
    layout = DICT_CLASSES[dict_class]
    d_in, latents = size(trainer, "activation_dim", config_path), size(trainer, "dict_size", config_path)
    state = read_torch(weights_path)
    if "ae" in state and "optimizer" in state:
        raise UniversalityError(f"{weights_path}: a mid-training backup (ae, optimizer, step), not a finished SAE; "
                                "load the ae.pt that training writes when it ends")
    weights = TensorFile(weights_path, state)
    dec_key, dec_rows = ("decoder", "latents") if dict_class == "AutoEncoderTopK" and weights.has("decoder") \
        else layout.W_dec
    W_enc = weights.matrix(layout.W_enc[0], d_in, latents, rows=layout.W_enc[1])
    W_dec = weights.matrix(dec_key, d_in, latents, rows=dec_rows)
    b_dec = weights.take(layout.b_dec, (d_in,))
    k = threshold = None
    metadata = {"architecture": dict_class}
    if layout.b_enc is None:
        W_enc, b_enc, threshold = _gated_as_jumprelu(W_enc, *(weights.take(key, (latents,))
                                                               for key in ("gate_bias", "r_mag", "mag_bias")))
    else:
        b_enc = weights.take(layout.b_enc, (latents,))
    if dict_class == "JumpReluAutoEncoder":
        threshold = jump_threshold(weights.take("threshold", (latents,)))
    if layout.activation in ("topk", "batchtopk"):
        k = _dictionary_learning_k(trainer, weights, latents, config_path)
        if layout.activation == "batchtopk":
            threshold = weights.take("threshold", ())  # [] buffer, -1 until training sets it
            if float(threshold) < 0:
                raise UniversalityError(f"{weights_path}: threshold is {float(threshold):g}, so training never set "
                                        "the inference threshold of this BatchTopK SAE; load a finished one")
        elif weights.has("threshold"):  # AutoEncoderTopK reads it only in encode(use_threshold=True), not by default
            weights.take("threshold", ())
    if dict_class == "MatryoshkaBatchTopKSAE":
        metadata["group_sizes"] = weights.integers("group_sizes")
    weights.check_all_taken(f"a dictionary_learning {dict_class}")
    for key, name in (("submodule_name", "hookpoint"), ("layer", "layer"), ("lm_name", "model")):
        if trainer.get(key) is not None:
            metadata[name] = trainer[key]
    return SAE(W_enc, b_enc, W_dec, b_dec, layout.activation, k, threshold, layout.subtract_decoder_bias, metadata)


def _dictionary_learning_k(trainer: dict, weights: TensorFile, latents: int, config_path: Path) -> int:
    """k from config.json's trainer and the state dict's `k` buffer (either may be missing, never both
    different)."""
    k = trainer.get("k")
    if weights.has("k"):
        stored = weights.integer("k")
        if k is not None and k != stored:
            raise UniversalityError(f"{weights.path}: k buffer is {stored} but {config_path.name} says k = "
                                    f"{short_repr(k)}; they must agree")
        k = stored
    return topk_k(k, latents, config_path)
