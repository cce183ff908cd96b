"""`HFAdapter`: the `ModelAdapter` interface over a Hugging Face `transformers` model.

Supported: GPT-2 (`gpt2`), GPT-NeoX / Pythia (`gpt_neox`), Llama-style gated MLPs (`llama`,
`mistral`, `qwen2`) and BERT encoders (`bert`, incl. MiniLM). Unit sets, per layer l:

| name                         | shape              | read at (transformers 5.x module paths)          |
|------------------------------|--------------------|--------------------------------------------------|
| blocks.{l}.mlp.hook_pre      | [batch, pos, d_mlp]  | input of the activation module: GPT-2 / GPT-NeoX `mlp.act`, Llama `mlp.act_fn` (the gate, before SiLU), BERT `intermediate.intermediate_act_fn` |
| blocks.{l}.mlp.hook_pre_linear | [batch, pos, d_mlp] | gated MLPs only: output of `mlp.up_proj`          |
| blocks.{l}.mlp.hook_post     | [batch, pos, d_mlp]  | input of the MLP output projection (`c_proj`, `dense_4h_to_h`, `down_proj`, `output.dense`): act(hook_pre), or act(gate) * up for gated MLPs, as in TransformerLens's GatedMLP |
| blocks.{l}.hook_resid_post   | [batch, pos, d_model] | output of block l (BERT: after its second LayerNorm) |
| ln_final.hook_scale          | [batch, pos, 1]    | decoders: sqrt(var + eps) (LayerNorm) or sqrt(mean x^2 + eps) (RMSNorm) of the final norm's input |

Decoders also have `component_sites` (edited and read by `circuits`, not unit sets):

| name                         | shape              | read at                                          |
|------------------------------|--------------------|--------------------------------------------------|
| blocks.{l}.hook_resid_pre    | [batch, pos, d_model] | input of block l                              |
| blocks.{l}.attn.hook_z       | [batch, pos, heads * d_head] | every head's z, head-major: input of the attention output projection (`attn.c_proj`, `attention.dense`, `self_attn.o_proj`) |
| blocks.{l}.hook_attn_out     | [batch, pos, d_model] | output of that projection                     |
| blocks.{l}.hook_mlp_out      | [batch, pos, d_model] | output of the MLP output projection           |

Reading `hook_post` at the projection's input makes it exactly the vector `W_out` multiplies,
for gated and plain MLPs alike. Attention patterns come from `output_attentions=True` with the
eager attention kernel, switched on for that call only (SDPA returns no probabilities).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UniversalityError
from ._adapter_base import ModelAdapter, Site

__all__ = ["HFAdapter", "ARCHITECTURES"]


@dataclass(frozen=True)
class Arch:
    """Module paths of one architecture: `layers` and `final_norm` under the base model, the rest under a block."""

    kind: str  # "decoder" | "encoder"
    layers: str
    act: str
    mlp_out: str
    up: str | None  # gated MLPs: the linear branch multiplied with act(gate)
    attn_out: str  # the attention's output projection, whose input is every head's z
    final_norm: str | None
    head: str  # parameter-name prefix of the LM head (missing from a base-model checkpoint)


_LLAMA = Arch("decoder", "layers", "mlp.act_fn", "mlp.down_proj", "mlp.up_proj", "self_attn.o_proj", "norm",
              "lm_head.")
ARCHITECTURES = {
    "gpt2": Arch("decoder", "h", "mlp.act", "mlp.c_proj", None, "attn.c_proj", "ln_f", "lm_head."),
    "gpt_neox": Arch("decoder", "layers", "mlp.act", "mlp.dense_4h_to_h", None, "attention.dense", "final_layer_norm",
                     "embed_out."),
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA,
    "bert": Arch("encoder", "encoder.layer", "intermediate.intermediate_act_fn", "output.dense", None,
                 "attention.output.dense", None, "cls."),
}


def check_architecture(model_type: str, where: str) -> Arch:
    if model_type not in ARCHITECTURES:
        raise UniversalityError(f"{where}: unsupported architecture {model_type!r}; supported model_type values: "
                                f"{', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


class HFAdapter(ModelAdapter):
    """Adapter over a `transformers.PreTrainedModel` in memory (use `load_model` to load one).

    Parameters
    ----------
    model : PreTrainedModel, a head model (`...ForCausalLM`, `...ForMaskedLM`) or a base model
    name : str, default=the model's `name_or_path`
    tokenizer : Hugging Face tokenizer or None
    has_head : bool, default=whether the model has output embeddings; False when the head was
        not in the checkpoint (its weights would be random), and `logits` then raises.
    """

    def __init__(self, model: nn.Module, *, name: str | None = None, tokenizer=None, has_head: bool | None = None):
        config = model.config
        self.model_type = config.model_type
        self.name = name or getattr(config, "name_or_path", "") or type(model).__name__
        arch = check_architecture(self.model_type, self.name)
        self.arch, self.kind, self.config = arch, arch.kind, config
        self.model, self.base, self.tokenizer = model.eval(), model.base_model, tokenizer
        self.has_head = (model.get_output_embeddings() is not None) if has_head is None else has_head
        self.n_layers, self.d_model = config.num_hidden_layers, config.hidden_size
        self.n_heads = config.num_attention_heads
        self.d_head = getattr(config, "head_dim", None) or self.d_model // self.n_heads
        self.n_kv_heads = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.d_mlp = (getattr(config, "n_inner", None) or 4 * self.d_model) if self.model_type == "gpt2" \
            else config.intermediate_size
        self.vocab_size, self.n_ctx = config.vocab_size, config.max_position_embeddings
        self.norm_eps = next((float(getattr(config, key)) for key in ("layer_norm_epsilon", "layer_norm_eps", "rms_norm_eps")
                              if getattr(config, key, None) is not None), None)  # gpt2; gpt_neox, bert; llama
        self.device = next(model.parameters()).device
        self._blocks = self._find_blocks()
        self.bos_token_id, self.pad_token_id = self._special_ids()
        self.unit_sets = {}
        for l in range(self.n_layers):
            self.unit_sets[f"blocks.{l}.mlp.hook_pre"] = self.d_mlp
            if arch.up:
                self.unit_sets[f"blocks.{l}.mlp.hook_pre_linear"] = self.d_mlp
            self.unit_sets[f"blocks.{l}.mlp.hook_post"] = self.d_mlp
            self.unit_sets[f"blocks.{l}.hook_resid_post"] = self.d_model
        if arch.final_norm:
            self.unit_sets["ln_final.hook_scale"] = 1

    def _find_blocks(self) -> list[nn.Module]:
        """The blocks, each checked to hold the activation and projection modules hooked."""
        try:
            blocks = list(self.base.get_submodule(self.arch.layers))
        except AttributeError:
            raise UniversalityError(f"{self.name}: no module {self.arch.layers!r} in this {self.model_type} model; "
                                    "is it a supported transformers version (5.x)?") from None
        if len(blocks) != self.n_layers:
            raise UniversalityError(f"{self.name}: {len(blocks)} blocks, the config says "
                                    f"num_hidden_layers={self.n_layers}")
        seen = set()
        for l, block in enumerate(blocks):
            for path in filter(None, (self.arch.act, self.arch.mlp_out, self.arch.up, self.arch.attn_out)):
                try:
                    module = block.get_submodule(path)
                except AttributeError:
                    module = None
                if not isinstance(module, nn.Module) or id(module) in seen:
                    raise UniversalityError(f"{self.name}: block {l} has no module {path!r} of its own to hook "
                                            f"(a custom activation function?); cannot read its MLP and attention")
                seen.add(id(module))
        return blocks

    def _special_ids(self) -> tuple[int | None, int | None]:
        """BOS: the tokenizer's BOS, else (GPT-2 style, as Gurnee et al.) its EOS; encoders use CLS.
        Ids outside the vocabulary (an unset default in a config) count as absent."""
        tok, cfg = self.tokenizer, self.config

        def first(*ids):
            return next((int(i) for i in ids if isinstance(i, int) and 0 <= i < self.vocab_size), None)

        t = (lambda attr: getattr(tok, attr, None)) if tok is not None else (lambda attr: None)
        if self.kind == "encoder":
            bos = first(t("cls_token_id"), t("bos_token_id"), getattr(cfg, "bos_token_id", None))
        else:
            bos = first(t("bos_token_id"), getattr(cfg, "bos_token_id", None), t("eos_token_id"),
                        getattr(cfg, "eos_token_id", None))
        return bos, first(t("pad_token_id"), getattr(cfg, "pad_token_id", None))

    def _sites(self) -> dict[str, Site]:
        sites = {}
        for l, block in enumerate(self._blocks):
            p = f"blocks.{l}."
            sites[p + "mlp.hook_pre"] = Site(block.get_submodule(self.arch.act), "input")
            if self.arch.up:
                sites[p + "mlp.hook_pre_linear"] = Site(block.get_submodule(self.arch.up), "output")
            sites[p + "mlp.hook_post"] = Site(block.get_submodule(self.arch.mlp_out), "input")
            sites[p + "hook_resid_post"] = Site(block, "output")
        if self.arch.final_norm:
            norm = self.base.get_submodule(self.arch.final_norm)
            sites["ln_final.hook_scale"] = Site(norm, "input", read=_norm_scale(norm))
        return sites | (self.component_sites() if self.kind == "decoder" else {})

    def component_sites(self) -> dict[str, Site]:
        """Sites for patching (`circuits`), decoders only (module docstring table)."""
        if self.kind != "decoder":
            raise UniversalityError(f"{self.name} is a {self.model_type} encoder; circuits (the IOI logit difference "
                                    "at the final position) need a decoder: GPT-2, GPT-NeoX / Pythia or Llama-style")
        sites = {}
        for l, block in enumerate(self._blocks):
            p, attn_out = f"blocks.{l}.", block.get_submodule(self.arch.attn_out)
            sites[p + "hook_resid_pre"] = Site(block, "input")  # blocks take hidden_states first, positionally
            sites[p + "attn.hook_z"] = Site(attn_out, "input")
            sites[p + "hook_attn_out"] = Site(attn_out, "output")
            sites[p + "hook_mlp_out"] = Site(block.get_submodule(self.arch.mlp_out), "output")
        return sites

    def attention_scale(self, layer: int) -> float:
        """The factor on layer `layer`'s q . k: the attention module's own `scaling` (GPT-2's
        `scale_attn_by_inverse_layer_idx`, as in the Stanford CRFM seeds, divides it by layer + 1)."""
        return float(self._blocks[layer].get_submodule(self.arch.attn_out.rsplit(".", 1)[0]).scaling)

    @torch.no_grad()
    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Rotary embedding (cos, sin), each float64 [pos, rotary_dim], of positions [pos], from the model's
        own `rotary_emb` (GPT-NeoX: the first rotary_dim dims of each head; Llama: all); None for learned positions."""
        rotary = getattr(self.base, "rotary_emb", None)
        if rotary is None:
            return None
        probe = torch.zeros(1, dtype=torch.float32, device=self.device)  # only its dtype and device are read
        cos, sin = rotary(probe, positions.to(self.device)[None])  # [1, pos, rotary_dim]
        return cos[0].double().cpu(), sin[0].double().cpu()

    def _forward(self, tokens, attention_mask, *, logits: bool = True, **kwargs):
        extra = {"use_cache": False} if self.kind == "decoder" else {}
        if not (logits and self.has_head):  # the base model alone: no vocabulary-sized matmul
            self.base(input_ids=tokens, attention_mask=attention_mask, **extra, **kwargs)
            return None
        return self.model(input_ids=tokens, attention_mask=attention_mask, **extra, **kwargs).logits

    def _patterns(self, tokens, attention_mask):
        with _eager_attention(self.model):
            out = self.base(input_ids=tokens, attention_mask=attention_mask, output_attentions=True,
                            **({"use_cache": False} if self.kind == "decoder" else {}))
        if not out.attentions or len(out.attentions) != self.n_layers:
            raise UniversalityError(f"{self.name}: the model returned no attention probabilities")
        return [a.detach() for a in out.attentions]  # layers x [batch, heads, query, key]

    def weights(self) -> dict[str, torch.Tensor]:
        """Raw weights by TransformerLens name, float32 CPU (see `_hf_weights` for the table)."""
        from ._hf_weights import hf_weights
        return hf_weights(self)


def _norm_scale(norm: nn.Module):
    """The divisor a final norm applies, [batch, pos, 1]: LayerNorm sqrt(var + eps), RMSNorm sqrt(mean x^2 + eps)."""
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None) or 1e-5
    if isinstance(norm, nn.LayerNorm):
        return lambda x: (x.float().var(dim=-1, unbiased=False, keepdim=True) + eps).sqrt()
    return lambda x: (x.float().pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()


@contextmanager
def _eager_attention(model):
    """Switch to the eager attention kernel (which returns probabilities) for one call."""
    before = model.config._attn_implementation
    if before == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)
