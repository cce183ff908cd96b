"""The sparse half of a TopK or BatchTopK training step: encode and decode only the kept latents.

A step keeps `nnz` (token, latent) pairs out of [tokens, latents] (k per token for TopK, k x tokens
over the batch for BatchTopK). Only the encoder's forward product needs every pair (to choose the
kept ones); everything else touches the kept pairs alone:

| product                                   | shape                   | as                             |
|-------------------------------------------|-------------------------|--------------------------------|
| decode  x_hat = S(z) W_dec                | [tokens, d_in]          | CSR [tokens, latents] @ dense  |
| dL/dz   = <dL/dx_hat[t], W_dec[i]>        | [nnz]                   | `torch.sparse.sampled_addmm`   |
| dL/dW_dec = S(z)^T dL/dx_hat              | [latents, d_in]         | CSR [latents, tokens] @ dense  |
| dL/dW_enc = S(dL/dpre)^T x_c              | [latents, d_in]         | CSR [latents, tokens] @ dense  |
| dL/dx_c = S(dL/dpre) W_enc                | [tokens, d_in]          | CSR [tokens, latents] @ dense  |

where S(v) is the [tokens, latents] matrix holding v at the kept pairs and 0 elsewhere. A dense step
multiplies [tokens, latents] by [latents, d_in] four more times (decode, its two gradients, the
encoder's weight gradient); these cost nnz x d_in each. No dense [tokens, latents] zeros are built.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["Pattern", "encode_kept", "decode_kept"]


class Pattern:
    """The kept (token, latent) pairs in compressed sparse row form, and its transpose (built once).

    crow : int64 [tokens + 1], the first entry of each token (CSR row pointers)
    col : int64 [nnz], each entry's latent, increasing within a token
    """

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, tokens: int, latents: int) -> None:
        self.crow, self.col, self.tokens, self.latents = crow, col, tokens, latents
        self._transpose: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def rows(cls, cols: torch.Tensor, latents: int) -> "Pattern":
        """The same number of latents per token: `cols` int64 [tokens, kept], increasing along each row."""
        tokens, kept = cols.shape
        crow = torch.arange(0, tokens * kept + 1, kept, device=cols.device)  # [tokens + 1]
        return cls(crow, cols.reshape(-1), tokens, latents)

    @classmethod
    def flat(cls, positions: torch.Tensor, tokens: int, latents: int) -> "Pattern":
        """Any number of latents per token: `positions` int64 [nnz], increasing, token * latents + latent."""
        counts = torch.bincount(positions // latents, minlength=tokens)  # [tokens]
        crow = torch.zeros(tokens + 1, dtype=torch.long, device=positions.device)
        torch.cumsum(counts, 0, out=crow[1:])
        return cls(crow, positions % latents, tokens, latents)

    @property
    def nnz(self) -> int:
        return self.col.shape[0]

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """S(values): the sparse CSR [tokens, latents] with `values` [nnz] at the kept pairs."""
        return _csr(self.crow, self.col, values, (self.tokens, self.latents))

    def transposed(self, values: torch.Tensor) -> torch.Tensor:
        """S(values)^T: the sparse CSR [latents, tokens]."""
        if self._transpose is None:
            # entries sorted by latent (stable: tokens stay increasing within a latent)
            order = torch.argsort(self.col, stable=True)  # [nnz]
            token = torch.repeat_interleave(torch.arange(self.tokens, device=self.col.device),
                                            self.crow.diff(), output_size=self.nnz)  # [nnz]
            crow = torch.zeros(self.latents + 1, dtype=torch.long, device=self.col.device)
            torch.cumsum(torch.bincount(self.col, minlength=self.latents), 0, out=crow[1:])
            self._transpose = (order, crow, token[order])
        order, crow, token = self._transpose
        return _csr(crow, token, values[order], (self.latents, self.tokens))

    def sampled(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[nnz]: <a[t], b[i]> at each kept pair (t, i); a [tokens, d], b [latents, d]."""
        empty = self.matrix(torch.zeros(self.nnz, dtype=a.dtype, device=a.device))
        return torch.sparse.sampled_addmm(empty, a, b.T, beta=0.0).values()


def _csr(crow, col, values, size) -> torch.Tensor:
    with warnings.catch_warnings():  # torch warns once per process that CSR support is "beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


class _EncodeKept(torch.autograd.Function):
    """z [nnz] = relu(x_c[t] . W_enc[i] + b_enc[i]) at the kept pairs, read off the dense pre-activations
    the selection computed anyway; the backward is sparse."""

    @staticmethod
    def forward(ctx, x_c, W_enc, b_enc, pattern, kept):
        ctx.pattern = pattern
        ctx.save_for_backward(x_c, W_enc, kept)
        return kept.clamp_min(0)

    @staticmethod
    def backward(ctx, grad_z):
        pattern = ctx.pattern
        x_c, W_enc, kept = ctx.saved_tensors
        grad = grad_z * (kept > 0)  # [nnz] through the relu
        grad_x = pattern.matrix(grad) @ W_enc if ctx.needs_input_grad[0] else None  # [tokens, d_in]
        grad_W = pattern.transposed(grad) @ x_c if ctx.needs_input_grad[1] else None  # [latents, d_in]
        grad_b = torch.bincount(pattern.col, grad, minlength=pattern.latents) if ctx.needs_input_grad[2] else None
        return grad_x, grad_W, grad_b, None, None


class _DecodeKept(torch.autograd.Function):
    """x_hat [tokens, d_in] = S(z) W_dec, without the bias."""

    @staticmethod
    def forward(ctx, z, W_dec, pattern):
        ctx.pattern = pattern
        ctx.save_for_backward(z, W_dec)
        return pattern.matrix(z) @ W_dec

    @staticmethod
    def backward(ctx, grad_out):
        pattern = ctx.pattern
        z, W_dec = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_z = pattern.sampled(grad_out, W_dec) if ctx.needs_input_grad[0] else None  # [nnz]
        grad_W = pattern.transposed(z) @ grad_out if ctx.needs_input_grad[1] else None  # [latents, d_in]
        return grad_z, grad_W, None


def encode_kept(x_c: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, pattern: Pattern,
                kept: torch.Tensor) -> torch.Tensor:
    """[nnz] latent activations at `pattern`, equal to relu(`kept`), the pre-activations there (no gradient);
    gradients reach x_c [tokens, d_in], W_enc [latents, d_in] and b_enc [latents] through the kept pairs only."""
    return _EncodeKept.apply(x_c, W_enc, b_enc, pattern, kept)


def decode_kept(z: torch.Tensor, W_dec: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """[tokens, d_in] = sum over kept pairs (t, i) of z * W_dec[i], without b_dec."""
    return _DecodeKept.apply(z, W_dec, pattern)
