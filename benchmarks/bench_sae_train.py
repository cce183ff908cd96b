"""Throughput of `universality.saes.train` (TopK + AuxK) against a plain PyTorch loop of the same algorithm.

Shape: d_in 512, 8x expansion (4096 latents), TopK k = 32, minibatches of 4096 tokens, on `--threads`
threads (2, set explicitly). In one run, alternating, each `--repeats` times:

1. ours: `train(stream, ...)` end to end: shuffle buffer, geometric-median init, sparse decode and
   gradients (`saes/_sparse.py`), fused Adam, dead-latent counters on the device;
2. baseline: the loop a user would write from Gao et al. 2024: an `nn.Module` with tied init, dense
   TopK (`scatter` into [tokens, latents] zeros, then `@ W_dec`), FVU + AuxK / 32 on dead latents
   (none die in so few tokens, in either), decoder gradient projection and renormalisation,
   `torch.optim.Adam` with its defaults, `loss.item()` logged every step; minibatches read in stream
   order (no shuffle buffer: that only favours the baseline).

Both see the same `--steps` minibatches of the same activations (correlated Gaussians, generated once;
generation is not timed); tokens/s = tokens trained / wall seconds, median over repeats (the best
repeat is printed too: on a shared machine it is the closest to the unloaded speed, and ours, many short
parallel operations, slows more than the baseline's few large GEMMs when another process takes a core). ours'
`SAE.metadata["metrics"]["fvu"]` and the baseline's last-tenth FVU are printed as a sanity check
(they follow the same algorithm, so they should be close). The last line is one JSON object.

    python benchmarks/bench_sae_train.py [--steps 12] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn

from universality.saes import train

D_IN, LATENTS, K, BATCH = 512, 4096, 32, 4096
AUX_K, DEAD_AFTER = 256, 10_000_000


def activations(steps: int, seed: int = 0) -> list[torch.Tensor]:
    """`steps` minibatches [BATCH, D_IN] of correlated Gaussian activations with an offset."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(D_IN, D_IN, generator=g) / D_IN**0.5
    offset = torch.randn(D_IN, generator=g)
    return [torch.randn(BATCH, D_IN, generator=g) @ mixing + offset for _ in range(steps)]


class UserTopKSAE(nn.Module):
    """A TopK SAE as tutorials write it: dense activations, dense decode."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(LATENTS, D_IN, generator=g)
        W = W / W.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W.clone())
        self.W_enc = nn.Parameter(W.clone())
        self.b_enc = nn.Parameter(torch.zeros(LATENTS))
        self.b_dec = nn.Parameter(torch.zeros(D_IN))

    def forward(self, x, dead):
        pre = torch.relu((x - self.b_dec) @ self.W_enc.T + self.b_enc)  # [tokens, latents]
        values, indices = pre.topk(K, dim=1)
        acts = torch.zeros_like(pre).scatter(1, indices, values)
        x_hat = acts @ self.W_dec + self.b_dec
        aux = None
        if dead.any():
            dead_pre = pre.masked_fill(~dead, 0.0)
            aux_values, aux_indices = dead_pre.topk(min(AUX_K, int(dead.sum())), dim=1)
            aux = torch.zeros_like(pre).scatter(1, aux_indices, aux_values) @ self.W_dec
        return x_hat, acts, aux


def baseline(batches: list[torch.Tensor], seed: int = 0) -> tuple[float, float]:
    """Seconds for the user's loop over `batches`, and its FVU over the last tenth of the steps."""
    start = time.perf_counter()
    sae = UserTopKSAE(seed)
    with torch.no_grad():
        sae.b_dec.copy_(batches[0].mean(0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=2e-4 / (LATENTS / 2**14) ** 0.5)
    since_fired = torch.zeros(LATENTS, dtype=torch.long)
    log = []
    for step, x in enumerate(batches):
        dead = since_fired >= DEAD_AFTER
        x_hat, acts, aux = sae(x, dead)
        variance = (x - x.mean(0)).pow(2).sum()
        e = x - x_hat
        fvu = e.pow(2).sum() / variance
        loss = fvu if aux is None else fvu + (e.detach() - aux).pow(2).sum() / variance / 32
        optimizer.zero_grad()
        loss.backward()
        with torch.no_grad():
            W = sae.W_dec
            W.grad -= (W.grad * W).sum(1, keepdim=True) * W
        optimizer.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
            fired = (acts > 0).any(0)
            since_fired += len(x)
            since_fired[fired] = 0
        log.append({"step": step, "loss": loss.item(), "fvu": fvu.item()})
    window = max(1, len(log) // 10)
    return time.perf_counter() - start, statistics.mean(r["fvu"] for r in log[-window:])


def ours(batches: list[torch.Tensor], seed: int = 0) -> tuple[float, float]:
    """Seconds for `train` over `batches`, and its reported FVU over the last tenth of the steps."""
    start = time.perf_counter()
    sae = train(iter(batches), d_in=D_IN, latents=LATENTS, k=K, seed=seed, batch_size=BATCH,
                buffer_tokens=4 * BATCH, aux_k=AUX_K, dead_after_tokens=DEAD_AFTER)
    seconds = time.perf_counter() - start
    assert sae.metadata["training"]["tokens"] == BATCH * len(batches)
    return seconds, sae.metadata["metrics"]["fvu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = activations(args.steps)
    ours(batches[:2]), baseline(batches[:2])  # warm-up: allocator, kernels
    ours_s, base_s = [], []
    for repeat in range(args.repeats):
        seconds, fvu_ours = ours(batches)
        ours_s.append(seconds)
        seconds, fvu_base = baseline(batches)
        base_s.append(seconds)
        print(f"repeat {repeat}: ours {ours_s[-1]:.2f} s (FVU {fvu_ours:.3f}), "
              f"baseline {base_s[-1]:.2f} s (FVU {fvu_base:.3f})")
    tokens = BATCH * args.steps
    ours_rate, base_rate = tokens / statistics.median(ours_s), tokens / statistics.median(base_s)
    print(f"d_in {D_IN}, {LATENTS} latents, k {K}, {args.steps} steps of {BATCH} tokens, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"best repeats: ours {tokens / min(ours_s):.0f} tokens/s, baseline {tokens / min(base_s):.0f} tokens/s, "
          f"speedup {min(base_s) / min(ours_s):.2f}")
    print(json.dumps({
        "train_tokens_per_s": round(ours_rate, 1),
        "baseline_tokens_per_s": round(base_rate, 1),
        "train_speedup": round(ours_rate / base_rate, 3),
    }))


if __name__ == "__main__":
    main()
