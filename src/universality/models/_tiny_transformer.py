"""A tiny pre-LayerNorm decoder transformer with TransformerLens hook names, in one file.

Follows nanoGPT's `model.py` (karpathy/nanoGPT: "Full definition of a GPT Language Model, all
of it in this single file"): token + learned positional embedding, `n_layers` blocks of
causal self-attention and an MLP, each behind a LayerNorm and added to the residual stream,
a final LayerNorm and an (untied) unembedding. No dropout. The attention pattern is computed
explicitly (no fused kernel) so it can be hooked.

Hook points are identity modules (TransformerLens `HookPoint`); their names come from module
paths and match TransformerLens verbatim:

    name                          shape
    hook_embed                    [batch, pos, d_model]
    hook_pos_embed                [batch, pos, d_model]
    blocks.{l}.hook_resid_pre     [batch, pos, d_model]
    blocks.{l}.attn.hook_pattern  [batch, heads, query, key]
    blocks.{l}.mlp.hook_pre       [batch, pos, d_mlp]   before the activation
    blocks.{l}.mlp.hook_post      [batch, pos, d_mlp]   after the activation
    blocks.{l}.hook_resid_post    [batch, pos, d_model]

>>> model = TinyTransformer(ModelConfig(d_model=16, n_heads=2, d_mlp=32), vocab_size=10, n_ctx=8)
>>> model(torch.zeros(3, 8, dtype=torch.long)).shape
torch.Size([3, 8, 10])
>>> list(model.unit_sets())[:3]
['hook_embed', 'hook_pos_embed', 'blocks.0.hook_resid_pre']
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..errors import UniversalityError

__all__ = ["HookPoint", "TinyTransformer"]

INIT_STD = 0.02  # nanoGPT / GPT-2 initialisation


class HookPoint(nn.Module):
    """Identity module: a named place where activations can be read or changed by hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Attention(nn.Module):
    """Multi-head causal self-attention; the pattern is exposed at `hook_pattern`."""

    def __init__(self, config: ModelConfig, n_ctx: int):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.hook_pattern = HookPoint()  # [batch, heads, query, key]
        causal = torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool))  # [query, key]
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, pos, d_model = x.shape  # [batch, pos, d_model]
        d_head = d_model // self.n_heads
        q, k, v = self.qkv(x).split(d_model, dim=2)  # 3 x [batch, pos, d_model]
        q, k, v = (t.view(batch, pos, self.n_heads, d_head).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d_head)  # [batch, heads, query, key]
        scores = scores.masked_fill(~self.causal[:pos, :pos], float("-inf"))
        pattern = self.hook_pattern(scores.softmax(dim=-1))  # [batch, heads, query, key]
        z = pattern @ v  # [batch, heads, pos, d_head]
        z = z.transpose(1, 2).reshape(batch, pos, d_model)  # [batch, pos, d_model]
        return self.out(z)


class MLP(nn.Module):
    """d_model -> d_mlp -> activation -> d_model, with `hook_pre` and `hook_post` around the activation."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.d_model, config.d_mlp)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.activation = nn.GELU() if config.activation == "gelu" else nn.ReLU()
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]
        self.fc_out = nn.Linear(config.d_mlp, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.hook_pre(self.fc_in(x))  # [batch, pos, d_mlp]
        post = self.hook_post(self.activation(pre))  # [batch, pos, d_mlp]
        return self.fc_out(post)  # [batch, pos, d_model]


class Block(nn.Module):
    """Pre-LayerNorm block: resid += attn(ln1(resid)); resid += mlp(ln2(resid))."""

    def __init__(self, config: ModelConfig, n_ctx: int):
        super().__init__()
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = Attention(config, n_ctx)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        resid = resid + self.attn(self.ln1(resid))
        resid = resid + self.mlp(self.ln2(resid))
        return self.hook_resid_post(resid)


class TinyTransformer(nn.Module):
    """Decoder-only transformer: tokens [batch, pos] -> logits [batch, pos, vocab_size].

    Parameters
    ----------
    config : ModelConfig
    vocab_size : int, the number of token ids
    n_ctx : int, the longest sequence the positional embedding covers
    seed : int, default=0, the initialisation seed (the global torch RNG is not used or changed)
    """

    def __init__(self, config: ModelConfig, *, vocab_size: int, n_ctx: int, seed: int = 0):
        super().__init__()
        self.config, self.vocab_size, self.n_ctx = config, vocab_size, n_ctx
        with torch.random.fork_rng(devices=[]):  # nn defaults draw from the global RNG; keep it intact
            self.embed = nn.Embedding(vocab_size, config.d_model)
            self.hook_embed = HookPoint()  # [batch, pos, d_model]
            self.pos_embed = nn.Embedding(n_ctx, config.d_model)
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
            self.blocks = nn.ModuleList(Block(config, n_ctx) for _ in range(config.n_layers))
            self.ln_final = nn.LayerNorm(config.d_model)
            self.unembed = nn.Linear(config.d_model, vocab_size, bias=False)
        self.reset_parameters(torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """nanoGPT initialisation from `generator`, in `named_modules` order.

        Weights ~ N(0, 0.02), output projections of each residual branch ~ N(0, 0.02 / sqrt(2 n_layers)),
        biases 0, LayerNorm scales 1.
        """
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if name.endswith(("attn.out", "mlp.fc_out")) else INIT_STD
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [batch, pos, vocab_size] for tokens [batch, pos]."""
        batch, pos = tokens.shape
        if pos > self.n_ctx:
            raise UniversalityError(f"cannot run {pos} tokens: the model's context is n_ctx={self.n_ctx}")
        positions = torch.arange(pos, device=tokens.device)
        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(  # [batch, pos, d_model]
            self.pos_embed(positions).expand(batch, pos, -1))
        for block in self.blocks:
            resid = block(resid)
        return self.unembed(self.ln_final(resid))  # [batch, pos, vocab_size]

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point by its module path, in model order."""
        return {name: module for name, module in self.named_modules() if isinstance(module, HookPoint)}

    def unit_sets(self) -> dict[str, int]:
        """Units per hook point for every hook whose output is [batch, pos, units] (all but hook_pattern)."""
        d_model, d_mlp = self.config.d_model, self.config.d_mlp
        return {name: d_mlp if ".mlp." in name else d_model
                for name in self.hook_points() if not name.endswith("hook_pattern")}
