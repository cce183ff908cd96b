"""The two models of Chughtai, Chan, Nanda 2023 ("A Toy Model of Universality") for group composition.

`GroupMLP` is the paper's MLP: left and right embeddings E_L, E_R [order, embed_dim], concatenated,
W [hidden, 2 embed_dim] without bias, ReLU, unembedding U [order, hidden] without bias. Splitting
W = [W_L | W_R] gives pre(a, b) = W_L E_L[a] + W_R E_R[b] = T_L[a] + T_R[b]: the forward builds
the per-element tables T_L, T_R [order, hidden] once and gathers them per pair, the same function
as concat + linear at a fraction of the cost (order rows instead of pairs rows through W).

`GroupTransformer` is the paper's one-layer transformer (Nanda et al. 2023's grokking model): tokens
[a, b, "="] ("=" is token `order`), token + learned positional embedding, multi-head attention,
a ReLU MLP, no LayerNorm, logits over the `order` elements read at "=". With one layer nothing
computed at positions a and b after the embedding reaches those logits, so attention and MLP run
at the "=" position only.

Hook points (identity `HookPoint`s, names from module paths, TransformerLens form):

    model             name                          shape
    GroupMLP          mlp.hook_pre                  [pairs, hidden]  before the ReLU
    GroupMLP          mlp.hook_post                 [pairs, hidden]  after the ReLU
    GroupTransformer  blocks.0.attn.hook_pattern    [pairs, heads, key=3]  the "=" query's pattern (after
                                                    the attention-rate mix, so rows sum to 3 - 2 rate)
    GroupTransformer  blocks.0.mlp.hook_pre         [pairs, d_mlp]  at "=", before the ReLU
    GroupTransformer  blocks.0.mlp.hook_post        [pairs, d_mlp]  at "=", after the ReLU

>>> model = GroupMLP(6, embed_dim=8, hidden=16)
>>> pairs = torch.arange(36)
>>> model(pairs // 6, pairs % 6).shape
torch.Size([36, 6])
>>> model.unit_sets()
{'mlp.hook_pre': 16, 'mlp.hook_post': 16}
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UniversalityError, short_repr
from ._tiny_transformer import HookPoint

__all__ = ["GroupMLP", "GroupTransformer"]


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UniversalityError(f"{field} must be one of: {', '.join(choices)}; got {value!r}")


def _check_attention_rate(rate: float) -> None:
    """Raise unless `rate` is a real number in [0, 1] (Zhong et al.'s attention rate)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise UniversalityError(f"attention_rate must be a number in [0, 1] (1 = softmax attention, 0 = constant "
                                f"attention), got {short_repr(rate)}")


class _HookedModel(nn.Module):
    """Shared by both models: hook points by module path, and the [pairs, units] unit sets."""

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point by its module path, in model order."""
        return {name: module for name, module in self.named_modules() if isinstance(module, HookPoint)}

    def unit_sets(self) -> dict[str, int]:
        """Units per hook point for every hook whose output is [pairs, units] (all but hook_pattern)."""
        return {name: self.units for name in self.hook_points() if not name.endswith("hook_pattern")}

    def _check_pairs(self, left: torch.Tensor, right: torch.Tensor) -> None:
        if left.shape != right.shape or left.dim() != 1:
            raise UniversalityError(f"left and right must be index tensors of one shape [pairs], got "
                                    f"{list(left.shape)} and {list(right.shape)}")


class GroupMLP(_HookedModel):
    """The paper's MLP: (a, b) [pairs] -> logits [pairs, order].

    Parameters
    ----------
    order : int, the group's order |G|
    embed_dim : int, default=256, width of each embedding (paper: 256)
    hidden : int, default=128, hidden ReLU units (paper: 128)
    seed : int, default=0, the initialisation seed (the global torch RNG is not used or changed)
    init : {'paper', 'torch'}, default='paper', how the weights are drawn from a `torch.Generator`
        seeded by `seed`:
        - 'paper': the authors' `OneLayerMLP` (rep-theory-mech-interp, utils/models.py): every matrix
          ~ randn / sqrt(fan), drawn in their layout and order: W_x = E_L and W_y = E_R [order, embed_dim]
          / sqrt(embed_dim), W [2 embed_dim, hidden] / sqrt(2 embed_dim), W_U [hidden, order] / sqrt(hidden);
          with the same seed this gives their tensors exactly (E_L std 0.0625 at embed_dim 256);
        - 'torch': PyTorch's layer defaults, this package's earlier init: embeddings ~ N(0, 1), linear
          weights ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), in the order embed_left, embed_right, linear, unembed.
    """

    def __init__(self, order: int, *, embed_dim: int = 256, hidden: int = 128, seed: int = 0,
                 init: Literal["paper", "torch"] = "paper"):
        super().__init__()
        _check_choice("init", init, ("paper", "torch"))
        self.order, self.embed_dim, self.hidden, self.units = order, embed_dim, hidden, hidden
        self.embed_left = nn.Parameter(torch.empty(order, embed_dim))  # E_L
        self.embed_right = nn.Parameter(torch.empty(order, embed_dim))  # E_R
        with torch.random.fork_rng(devices=[]):  # nn defaults draw from the global RNG; keep it intact
            self.linear = nn.Linear(2 * embed_dim, hidden, bias=False)  # W = [W_L | W_R], [hidden, 2 embed_dim]
            self.mlp = nn.ModuleDict({"hook_pre": HookPoint(), "hook_post": HookPoint()})  # [pairs, hidden]
            self.unembed = nn.Linear(hidden, order, bias=False)  # U, [order, hidden]
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if init == "paper":  # randn / sqrt(fan) in the authors' shapes, transposed into nn.Linear's
                for embedding in (self.embed_left, self.embed_right):
                    embedding.copy_(torch.randn(order, embed_dim, generator=generator) / math.sqrt(embed_dim))
                for layer in (self.linear, self.unembed):  # W [2 embed_dim, hidden], W_U [hidden, order]
                    drawn = torch.randn(layer.in_features, layer.out_features, generator=generator)
                    layer.weight.copy_((drawn / math.sqrt(layer.in_features)).T)
                return
            for embedding in (self.embed_left, self.embed_right):
                embedding.copy_(torch.randn(embedding.shape, generator=generator))
            for layer in (self.linear, self.unembed):
                bound = 1 / math.sqrt(layer.in_features)
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound)

    def hidden_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """T_L = E_L W_L^T and T_R = E_R W_R^T, each [order, hidden]: pre(a, b) = T_L[a] + T_R[b]."""
        w_left, w_right = self.linear.weight.split(self.embed_dim, dim=1)  # 2 x [hidden, embed_dim]
        return self.embed_left @ w_left.T, self.embed_right @ w_right.T  # 2 x [order, hidden]

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Logits [pairs, order] for element indices left, right [pairs]."""
        self._check_pairs(left, right)
        table_left, table_right = self.hidden_tables()  # 2 x [order, hidden]
        pre = self.mlp["hook_pre"](F.embedding(left, table_left) + F.embedding(right, table_right))  # [pairs, hidden]
        post = self.mlp["hook_post"](F.relu(pre))  # [pairs, hidden]
        return self.unembed(post)  # [pairs, order]


class GroupTransformer(_HookedModel):
    """One-layer transformer without LayerNorm: (a, b) [pairs] -> logits [pairs, order] at "=".

    Parameters
    ----------
    order : int, the group's order; the vocabulary is the order elements and "=" (token `order`)
    d_model : int, default=128
    n_heads : int, default=4
    d_head : int, default=32
    d_mlp : int, default=512
    seed : int, default=0, the initialisation seed (the global torch RNG is not used or changed)
    init : {'paper', 'nanda'}, default='paper', how the weights are drawn from a `torch.Generator`
        seeded by `seed` (MLP biases start at 0 either way):
        - 'paper': the authors' `Transformer`, a TransformerLens 0.2.0 `HookedTransformer` with
          `init_weights`: every weight matrix ~ N(0, (0.8 / sqrt(d_model))^2), the unembedding included,
          drawn with `normal_` in TransformerLens's layout and order (W_E, W_pos, W_Q, W_K, W_V
          [heads, d_model, d_head], W_O [heads, d_head, d_model], W_in, W_out, W_U);
        - 'nanda': Nanda et al.'s grokking transformer, this package's earlier init: weights
          ~ N(0, 1/d_model), the unembedding ~ N(0, 1/order), in `named_parameters` order.
    mlp_biases : {'frozen', 'trained'}, default='frozen'. The authors' code freezes every bias at
        its initial 0 (`requires_grad = False` on each `b_` parameter), so the paper's transformer
        has none in effect; 'trained' lets AdamW train the MLP's two biases.
    attention_rate : float in [0, 1], default=1. Zhong et al. 2023 ("The Clock and the Pizza", arXiv
        2306.17844) interpolate between softmax and constant attention with their attention rate alpha:
        pattern = alpha softmax(scores) + (1 - alpha), the constant part all ones, not 1/keys (their
        code, fjzzq2002/pizza `code/train-main.py`, `Attention.forward`: `normalized * self.attn_coeff
        + (1 - self.attn_coeff)`). 1 is ordinary attention (the forward is then unchanged, bit for bit);
        0 is constant attention, where the "=" position reads the sum of the three values.
    """

    def __init__(self, order: int, *, d_model: int = 128, n_heads: int = 4, d_head: int = 32,
                 d_mlp: int = 512, seed: int = 0, init: Literal["paper", "nanda"] = "paper",
                 mlp_biases: Literal["frozen", "trained"] = "frozen", attention_rate: float = 1.0):
        super().__init__()
        _check_choice("init", init, ("paper", "nanda"))
        _check_choice("mlp_biases", mlp_biases, ("frozen", "trained"))
        _check_attention_rate(attention_rate)
        self.order, self.d_model, self.n_heads, self.d_head, self.d_mlp = order, d_model, n_heads, d_head, d_mlp
        self.units, self.attention_rate = d_mlp, float(attention_rate)
        with torch.random.fork_rng(devices=[]):  # nn defaults draw from the global RNG; keep it intact
            self.embed = nn.Embedding(order + 1, d_model)  # [vocab, d_model]
            self.pos_embed = nn.Embedding(3, d_model)  # positions of a, b, "="
            self.blocks = nn.ModuleList([_Block(d_model, n_heads, d_head, d_mlp, self.attention_rate)])
            self.unembed = nn.Linear(d_model, order, bias=False)  # [order, d_model]
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if name.endswith("bias"):
                    parameter.zero_()
                    parameter.requires_grad_(mlp_biases == "trained")
                elif init == "nanda":
                    std = 1 / math.sqrt(order if name.startswith("unembed") else d_model)
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            if init == "paper":
                self._lens_init(generator)

    @torch.no_grad()
    def _lens_init(self, generator: torch.Generator) -> None:
        """TransformerLens 0.2.0 `init_weights`: `normal_(std=0.8 / sqrt(d_model))` on each `W_` matrix in its
        order and layout, then moved into this model's modules (nn.Linear stores [out, in])."""
        d, h, e = self.d_model, self.n_heads, self.d_head
        std = 0.8 / math.sqrt(d)

        def draw(*shape: int) -> torch.Tensor:
            return torch.empty(shape).normal_(0.0, std, generator=generator)

        attn, mlp = self.blocks[0].attn, self.blocks[0].mlp
        self.embed.weight.copy_(draw(self.order + 1, d))  # W_E [vocab, d_model]
        self.pos_embed.weight.copy_(draw(3, d))  # W_pos [3, d_model]
        for layer in (attn.query, attn.key, attn.value):  # W_Q, W_K, W_V [heads, d_model, d_head]
            layer.weight.copy_(draw(h, d, e).permute(0, 2, 1).reshape(h * e, d))  # [heads * d_head, d_model]
        attn.out.weight.copy_(draw(h, e, d).reshape(h * e, d).T)  # W_O [heads, d_head, d_model] -> [d_model, h e]
        mlp.fc_in.weight.copy_(draw(d, self.d_mlp).T)  # W_in [d_model, d_mlp]
        mlp.fc_out.weight.copy_(draw(self.d_mlp, d).T)  # W_out [d_mlp, d_model]
        self.unembed.weight.copy_(draw(d, self.order).T)  # W_U [d_model, order]

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Logits [pairs, order] for element indices left, right [pairs]."""
        self._check_pairs(left, right)
        equals = torch.full_like(left, self.order)
        tokens = torch.stack([left, right, equals], dim=1)  # [pairs, 3]
        resid = self.embed(tokens) + self.pos_embed.weight  # [pairs, 3, d_model]
        last = self.blocks[0](resid)  # [pairs, d_model] at "="
        return self.unembed(last)  # [pairs, order]


class _Block(nn.Module):
    """resid_= += attn(resid)_=; resid_= += mlp(resid_=), both at the "=" position only."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, d_mlp: int, attention_rate: float):
        super().__init__()
        self.attn = _Attention(d_model, n_heads, d_head, attention_rate)
        self.mlp = _MLP(d_model, d_mlp)

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        last = resid[:, -1] + self.attn(resid)  # [pairs, d_model]
        return last + self.mlp(last)


class _Attention(nn.Module):
    """The "=" query over keys a, b, "=" (causal attention at the last position sees all three), with
    Zhong et al.'s attention rate (see `GroupTransformer`)."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, attention_rate: float):
        super().__init__()
        self.n_heads, self.d_head, self.attention_rate = n_heads, d_head, attention_rate
        self.query = nn.Linear(d_model, n_heads * d_head, bias=False)  # W_Q
        self.key = nn.Linear(d_model, n_heads * d_head, bias=False)  # W_K
        self.value = nn.Linear(d_model, n_heads * d_head, bias=False)  # W_V
        self.out = nn.Linear(n_heads * d_head, d_model, bias=False)  # W_O
        self.hook_pattern = HookPoint()  # [pairs, heads, key]

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        pairs, pos, _ = resid.shape  # [pairs, 3, d_model]
        q = self.query(resid[:, -1]).view(pairs, self.n_heads, self.d_head)  # [pairs, heads, d_head]
        k = self.key(resid).view(pairs, pos, self.n_heads, self.d_head)  # [pairs, key, heads, d_head]
        v = self.value(resid).view(pairs, pos, self.n_heads, self.d_head)  # [pairs, key, heads, d_head]
        scores = torch.einsum("phd,pkhd->phk", q, k) / math.sqrt(self.d_head)  # [pairs, heads, key]
        pattern = scores.softmax(dim=-1)  # [pairs, heads, key]
        if self.attention_rate != 1.0:  # at 1 skip the mix: the default forward stays bit-identical
            pattern = self.attention_rate * pattern + (1.0 - self.attention_rate)  # alpha softmax + (1 - alpha) ones
        pattern = self.hook_pattern(pattern)  # [pairs, heads, key]
        z = torch.einsum("phk,pkhd->phd", pattern, v)  # [pairs, heads, d_head]
        return self.out(z.reshape(pairs, self.n_heads * self.d_head))  # [pairs, d_model]


class _MLP(nn.Module):
    """d_model -> d_mlp -> ReLU -> d_model at "=", with `hook_pre` and `hook_post` [pairs, d_mlp]."""

    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_mlp)
        self.hook_pre = HookPoint()  # [pairs, d_mlp]
        self.hook_post = HookPoint()  # [pairs, d_mlp]
        self.fc_out = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.hook_pre(self.fc_in(x))  # [pairs, d_mlp]
        return self.fc_out(self.hook_post(F.relu(pre)))  # [pairs, d_model]
