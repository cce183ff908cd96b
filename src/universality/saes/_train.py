"""Train one sparse autoencoder on a stream of activations: TopK, BatchTopK, or ReLU with an L1 penalty.

| rule        | chosen by           | training step keeps                     | loss                                 |
|-------------|---------------------|-----------------------------------------|--------------------------------------|
| `topk`      | `k`                 | the k largest pre-activations per token | NMSE + AuxK / 32                     |
| `batchtopk` | `k`, `activation=`  | the k x tokens largest over the batch   | NMSE + AuxK / 32                     |
| `relu`      | `l1`                | every positive pre-activation           | mean ||x - x_hat||^2 + l1 mean sum z |

Symbols (Gao et al. 2024, *Scaling and evaluating sparse autoencoders*): x [tokens, d_in] a minibatch,
x_c = x - b_dec, pre = x_c W_enc^T + b_enc [tokens, latents], z the kept latents' relu(pre),
x_hat = z W_dec + b_dec, e = x - x_hat; NMSE = mean_t ||e_t||^2 / v, where v is the variance
sum_t ||x_t - mean(x)||^2 / tokens of the first minibatch. Gao et al. divide by each minibatch's own
variance (the FVU); that is close to v, Adam is blind to a constant factor, and a fixed v cannot be
zeroed by a short last minibatch. `metadata["metrics"]["fvu"]` is the FVU itself.

- AuxK (Gao et al. 2024, section A.2): a latent is dead when it has not fired for `dead_after_tokens`
  tokens (10M, theirs). The top `aux_k` of the dead latents' pre-activations per token reconstruct the
  residual: e_hat = z_aux W_dec (no bias); AuxK = mean_t ||e_t - e_hat_t||^2 / v with e held fixed,
  added with coefficient 1/32 (theirs). It gives dead latents a gradient toward what the live ones
  miss. The dead set is read every `DEAD_CHECK_EVERY` steps (one host read, not one per step).
- BatchTopK (Bussmann, Leask, Nanda 2024): training keeps the k x tokens largest over the batch; at
  inference a latent fires where its pre-activation exceeds one global threshold, estimated as the mean
  over training minibatches of the smallest positive kept activation, stored in `SAE.threshold` (0-dim).
- ReLU: L1 on the activations. The penalty of Bricken et al. 2023 / Conerly et al. 2024 weighs each
  latent by its decoder norm; the decoder rows here are unit-norm, so it is plain L1.
- Decoder rows are unit-norm: before each Adam step the gradient's component along each row is removed,
  after it the rows are divided by their norms (Bricken et al. 2023; Gao et al. 2024).
- Initialisation (a seeded `torch.Generator`, independent of the shuffling one): W_dec rows are random
  unit vectors, W_enc = W_dec (tied, Gao et al.), b_enc = 0, b_dec = the geometric median of the first
  minibatch (Weiszfeld's iteration; Bricken et al. 2023).
- Speed: TopK and BatchTopK compute only the encoder's forward product densely; decoding and all
  gradients touch the kept latents alone (`_sparse`); Adam is the fused one; nothing is read back to the
  host during a step (but BatchTopK's count of tokens over their candidates).

>>> g = torch.Generator().manual_seed(0)
>>> stream = [torch.randn(256, 8, generator=g) for _ in range(4)]
>>> sae = train(stream, d_in=8, latents=32, k=4, batch_size=128, buffer_tokens=512)
>>> sae.activation, sae.k, tuple(sae.W_dec.shape), sae.metadata["training"]["steps"]
('topk', 4, (32, 8), 8)
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable

import numpy as np
import torch

from .._inputs import check_device
from ..errors import UniversalityError
from ._buffer import shuffled_batches
from ._sae import SAE
from ._sparse import Pattern, decode_kept, encode_kept

__all__ = ["train", "AUX_COEFFICIENT", "TRAINED_ACTIVATIONS"]

AUX_COEFFICIENT = 1 / 32  # alpha of Gao et al. 2024, section A.2
TRAINED_ACTIVATIONS = ("topk", "batchtopk", "relu")
DEAD_CHECK_EVERY = 16  # steps between reads of the dead set (a revived latent keeps AuxK until the next)
BATCHTOPK_CANDIDATES = 2  # a token's 2k largest are its BatchTopK candidates (see `batch_topk`)
GEOMETRIC_MEDIAN_STEPS = 100


def train(
    batches: Iterable[torch.Tensor],
    *,
    d_in: int,
    latents: int,
    k: int | None = None,
    l1: float | None = None,
    activation: str | None = None,
    seed: int = 0,
    lr: float | None = None,
    steps: int | None = None,
    batch_size: int = 4096,
    buffer_tokens: int = 32768,
    aux_k: int | None = None,
    dead_after_tokens: int = 10_000_000,
    device: str = "cpu",
) -> SAE:
    """Train an SAE on `batches`, an iterable of Tensor[tokens, d_in] activations, read once.

    d_in : int, the activations' width
    latents : int, the SAE's width
    k : int, latents kept per token (TopK; for BatchTopK the average); give `k` or `l1`, not both
    l1 : float, the L1 coefficient (ReLU); the loss is mean_t ||x_t - x_hat_t||^2 + l1 mean_t sum_i z_ti
        (SAELens' convention), so its scale follows the activations' scale
    activation : {'topk', 'batchtopk', 'relu'}, default: 'topk' when `k` is given, 'relu' when `l1` is
    seed : int, default=0; fixes the initialisation and the shuffling
    lr : float, Adam's learning rate; default 2e-4 / sqrt(latents / 2^14) (the fit of Gao et al. 2024)
    steps : int, default None: until the stream ends; otherwise at most this many minibatches
    batch_size : int, default=4096 tokens per minibatch (SAELens' default)
    buffer_tokens : int, default=32768 (8 minibatches, 64 MB at d_in 512), the shuffle buffer's rows
    aux_k : int, dead latents per token in AuxK; default d_in // 2 (Gao et al.: a power of two near d_model / 2)
    dead_after_tokens : int, default=10_000_000 (Gao et al.); a latent silent this long is dead
    device : str, default='cpu'; where the buffer, the weights and the returned SAE live

    Returns an `SAE` whose `metadata["training"]` holds these settings (resolved) with the tokens and
    steps run, and `metadata["metrics"]` the FVU and L0 over the last tenth of the steps' minibatches, the
    latents dead at the end (silent for the last min(dead_after_tokens, tokens) tokens) and tokens/s.
    Runs on torch's current thread count; the caller sets it (`universality._threads`).
    """
    rule = _check_settings(d_in, latents, k, l1, activation, seed, lr, steps, batch_size, buffer_tokens, aux_k,
                           dead_after_tokens)
    device = check_device(device)
    settings = {"activation": rule, "d_in": d_in, "latents": latents, "k": k, "l1": l1, "seed": seed,
                "lr": lr if lr is not None else 2e-4 / math.sqrt(latents / 2**14), "max_steps": steps,
                "batch_size": batch_size, "buffer_tokens": buffer_tokens,
                "aux_k": min(aux_k if aux_k is not None else max(1, d_in // 2), latents),
                "aux_coefficient": AUX_COEFFICIENT if rule != "relu" else None,
                "dead_after_tokens": dead_after_tokens, "b_dec_init": "geometric median of the first minibatch",
                "optimizer": "Adam(betas=(0.9, 0.999), eps=1e-8)"}
    stream = shuffled_batches(batches, d_in=d_in, buffer_tokens=buffer_tokens, batch_size=batch_size,
                              generator=torch.Generator().manual_seed(_derive_seed(seed, 1)), device=device)
    start = time.perf_counter()
    first = next(stream)
    run = _Run(settings, first, torch.Generator().manual_seed(_derive_seed(seed, 0)))
    for x in itertools.islice(itertools.chain([first], stream), steps):
        run.step(x)
    return run.result(time.perf_counter() - start)


class _Run:
    """One training run's state: parameters, optimizer, dead-latent counters, per-step metrics."""

    def __init__(self, settings: dict, first: torch.Tensor, generator: torch.Generator) -> None:
        self.settings, self.rule = settings, settings["activation"]
        latents, d_in, device = settings["latents"], settings["d_in"], first.device
        # 1. W_dec: random unit rows [latents, d_in]; W_enc tied to it; b_enc 0; b_dec the geometric median
        W_dec = torch.randn(latents, d_in, generator=generator)
        W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True)).to(device)
        self.W_enc = W_dec.clone().requires_grad_()
        self.W_dec = W_dec.requires_grad_()
        self.b_enc = torch.zeros(latents, device=device, requires_grad=True)
        self.b_dec = geometric_median(first).requires_grad_()
        self.scale = (first - first.mean(0)).square().sum(1).mean()  # v: the first minibatch's variance
        if not bool(self.scale > 0):
            raise UniversalityError(f"the first minibatch ({len(first)} tokens) has no variance: its activations "
                                    "are all equal; train on a stream of varying activations")
        params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        fused = device.type in ("cpu", "cuda")  # one kernel over all tensors: 11x faster at 4096 x 512 on CPU
        self.optimizer = torch.optim.Adam(params, lr=settings["lr"], betas=(0.9, 0.999), eps=1e-8, fused=fused)
        # 2. bookkeeping on the device: tokens since each latent last fired [latents]
        self.since_fired = torch.zeros(latents, dtype=torch.long, device=device)
        self.dead: torch.Tensor | None = None  # int64 [dead latents] for AuxK, or None
        self.threshold_sum = torch.zeros((), device=device)  # BatchTopK: sum of minibatch thresholds
        self.threshold_count = torch.zeros((), device=device)
        self.errors: list[torch.Tensor] = []  # per step, 0-dim: sum ||e||^2, sum ||x - mean||^2, L0
        self.variances: list[torch.Tensor] = []
        self.l0: list[torch.Tensor] = []
        self.tokens = 0

    def step(self, x: torch.Tensor) -> None:
        """One Adam step on minibatch x [tokens, d_in]."""
        steps_done = len(self.l0)
        if steps_done % DEAD_CHECK_EVERY == 0 and self.tokens >= self.settings["dead_after_tokens"]:
            dead = (self.since_fired >= self.settings["dead_after_tokens"]).nonzero().flatten()
            self.dead = dead if len(dead) and self.rule != "relu" else None
        loss, error, fired, l0 = (self._relu_loss if self.rule == "relu" else self._sparse_loss)(x)
        loss.backward()
        with torch.no_grad():
            # 3. remove the gradient along each decoder row, step, renormalise the rows
            W, grad = self.W_dec, self.W_dec.grad
            grad.sub_((grad * W).sum(1, keepdim=True) * W)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            W.div_(W.norm(dim=1, keepdim=True).clamp_min(1e-12))
            self.since_fired.add_(len(x)).masked_fill_(fired, 0)
            self.variances.append((x - x.mean(0)).square().sum())
        self.errors.append(error)
        self.l0.append(l0)
        self.tokens += len(x)

    def _sparse_loss(self, x: torch.Tensor):
        """TopK / BatchTopK: loss, sum ||e||^2, fired [latents] bool, L0, with the sparse products of `_sparse`."""
        latents = self.settings["latents"]
        x_c = x - self.b_dec  # [tokens, d_in]
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, x_c, self.W_enc.T).relu_()  # [tokens, latents], the one dense product
            if self.rule == "topk":
                cols = pre.topk(self.settings["k"], dim=1, sorted=False).indices.sort(dim=1).values  # [tokens, k]
                pattern, kept = Pattern.rows(cols, latents), pre.gather(1, cols).flatten()
            else:
                positions = batch_topk(pre, self.settings["k"] * len(x)).sort().values  # [k x tokens]
                pattern, kept = Pattern.flat(positions, len(x), latents), pre.flatten()[positions]
        z = encode_kept(x_c, self.W_enc, self.b_enc, pattern, kept)  # [nnz]
        e = x - (decode_kept(z, self.W_dec, pattern) + self.b_dec)  # [tokens, d_in]
        error = e.square().sum()
        loss = error / (len(x) * self.scale)
        if self.dead is not None:
            with torch.no_grad():  # AuxK: the top aux_k dead latents per token
                dead_pre = pre.index_select(1, self.dead)  # [tokens, dead]
                chosen = dead_pre.topk(min(self.settings["aux_k"], len(self.dead)), dim=1, sorted=False).indices
                chosen = chosen.sort(dim=1).values  # [tokens, aux_k], increasing latents
                aux_pattern = Pattern.rows(self.dead[chosen], latents)
                aux_kept = dead_pre.gather(1, chosen).flatten()
            z_aux = encode_kept(x_c, self.W_enc, self.b_enc, aux_pattern, aux_kept)
            e_hat = decode_kept(z_aux, self.W_dec, aux_pattern)  # [tokens, d_in]
            loss = loss + AUX_COEFFICIENT * (e.detach() - e_hat).square().sum() / (len(x) * self.scale)
        with torch.no_grad():
            active = z.detach() > 0  # [nnz]
            fired = torch.bincount(pattern.col, active.float(), minlength=latents) > 0  # [latents]
            if self.rule == "batchtopk":  # the smallest positive kept activation, where there is one
                smallest = z.detach().masked_fill(~active, math.inf).min()
                found = torch.isfinite(smallest)
                self.threshold_sum += torch.where(found, smallest, 0.0)
                self.threshold_count += found
        return loss, error.detach(), fired, active.sum() / len(x)

    def _relu_loss(self, x: torch.Tensor):
        """ReLU with L1: loss, sum ||e||^2, fired [latents] bool, L0, all dense."""
        z = torch.relu(torch.addmm(self.b_enc, x - self.b_dec, self.W_enc.T))  # [tokens, latents]
        e = x - torch.addmm(self.b_dec, z, self.W_dec)  # [tokens, d_in]
        squared = e.square().sum()
        loss = (squared + self.settings["l1"] * z.sum()) / len(x)  # z >= 0: sum z is its L1 norm
        with torch.no_grad():
            active = z > 0
            return loss, squared.detach(), active.any(0), active.sum() / len(x)

    def result(self, seconds: float) -> SAE:
        """The trained SAE, with the settings and the final metrics in its metadata."""
        steps = len(self.l0)
        if not all(bool(torch.isfinite(p).all()) for p in (self.W_enc, self.b_enc, self.W_dec, self.b_dec)):
            raise UniversalityError(f"training diverged: the weights hold NaN or infinite values after {steps} "
                                    f"steps; lower lr (was {self.settings['lr']:.3g})")
        window = max(1, steps // 10)
        silent_for = min(self.settings["dead_after_tokens"], self.tokens)
        threshold = None
        if self.rule == "batchtopk":
            count = float(self.threshold_count)
            threshold = (self.threshold_sum / count if count else self.threshold_sum).detach().clone()
        errors, variances = torch.stack(self.errors[-window:]), torch.stack(self.variances[-window:])
        metrics = {"fvu": float(errors.sum() / variances.sum()),
                   "l0": float(torch.stack(self.l0[-window:]).mean()),
                   "dead_latents": int((self.since_fired >= silent_for).sum()),
                   "seconds": round(seconds, 3), "tokens_per_s": round(self.tokens / max(seconds, 1e-9), 1)}
        training = dict(self.settings, steps=steps, tokens=self.tokens)
        name = f"{self.rule} SAE, {self.settings['latents']} latents"
        return SAE(self.W_enc.detach().clone(), self.b_enc.detach().clone(), self.W_dec.detach().clone(),
                   self.b_dec.detach().clone(), activation=self.rule, k=self.settings["k"], threshold=threshold,
                   subtract_decoder_bias=True,
                   metadata={"name": name, "format": "universality", "training": training, "metrics": metrics})


def batch_topk(acts: torch.Tensor, count: int) -> torch.Tensor:
    """Flat positions (token * latents + latent, int64 [count], any order) of the `count` largest entries
    of acts [tokens, latents]; exact (ties broken either way).

    One top-k over all tokens x latents entries is slow on CPU (0.64 s at 4096 x 4096 on one thread, twice
    the encoder product), so:
    1. candidates: each token's `BATCHTOPK_CANDIDATES` x (count / tokens) largest (0.11 s);
    2. cut: the count-th largest candidate (no larger than the true count-th largest);
    3. a token whose candidates all exceed the cut may hold more entries above it: replace its candidates
       by all its entries >= cut (rare: a token with over twice the average share);
    4. the top `count` of what is left.
    """
    tokens, latents = acts.shape
    per_token = min(latents, BATCHTOPK_CANDIDATES * -(-count // tokens))
    if per_token == latents:
        return acts.flatten().topk(count, sorted=False).indices
    values, cols = acts.topk(per_token, dim=1, sorted=False)  # [tokens, per_token]
    positions = (cols + torch.arange(tokens, device=acts.device)[:, None] * latents).flatten()
    cut = values.flatten().topk(count, sorted=False).values.min()
    full = (values.min(dim=1).values > cut).nonzero().flatten()  # [tokens that may hold more]
    values = values.flatten()
    if len(full):
        values.view(tokens, per_token)[full] = -math.inf  # their candidates, re-added below with the rest
        rows = acts.index_select(0, full)  # [full tokens, latents]
        row, col = (rows >= cut).nonzero(as_tuple=True)
        values = torch.cat([values, rows[row, col]])
        positions = torch.cat([positions, full[row] * latents + col])
    return positions[values.topk(count, sorted=False).indices]


def geometric_median(x: torch.Tensor, steps: int = GEOMETRIC_MEDIAN_STEPS) -> torch.Tensor:
    """[d_in]: the point minimising the summed distance to the rows of x [tokens, d_in] (Weiszfeld's
    iteration from the mean, in float64), as x's dtype."""
    points = x.double()
    median = points.mean(0)
    for _ in range(steps):
        weights = 1 / (points - median).norm(dim=1).clamp_min(1e-12)  # [tokens]
        updated = weights @ points / weights.sum()
        if bool((updated - median).norm() <= 1e-9 * (1 + median.norm())):
            median = updated
            break
        median = updated
    return median.to(x.dtype)


def _check_settings(d_in, latents, k, l1, activation, seed, lr, steps, batch_size, buffer_tokens, aux_k,
                    dead_after_tokens) -> str:
    """The activation rule, after checking every setting before any data is read."""
    for name, value in (("d_in", d_in), ("latents", latents), ("batch_size", batch_size),
                        ("buffer_tokens", buffer_tokens), ("dead_after_tokens", dead_after_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UniversalityError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("steps", steps), ("aux_k", aux_k), ("k", k)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UniversalityError(f"{name} must be a positive integer or None, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UniversalityError(f"seed must be an integer >= 0, got {seed!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UniversalityError(f"lr must be a positive number or None (the default), got {lr!r}")
    if l1 is not None and not (isinstance(l1, (int, float)) and math.isfinite(l1) and l1 >= 0):
        raise UniversalityError(f"l1 must be a number >= 0, got {l1!r}")
    if buffer_tokens < batch_size:
        raise UniversalityError(f"buffer_tokens ({buffer_tokens}) is smaller than batch_size ({batch_size}); "
                                "the buffer must hold at least one minibatch")
    if activation is None:
        if (k is None) == (l1 is None):
            given = "both k and l1" if k is not None else "neither k nor l1"
            raise UniversalityError(f"got {given}; give k for TopK (or activation='batchtopk') or l1 for ReLU "
                                    "with an L1 penalty")
        activation = "topk" if k is not None else "relu"
    if activation not in TRAINED_ACTIVATIONS:
        raise UniversalityError(f"train has no activation {activation!r}; choose one of: "
                                f"{', '.join(TRAINED_ACTIVATIONS)}")
    if activation == "relu" and (l1 is None or k is not None):
        raise UniversalityError(f"activation 'relu' takes l1 and not k, got k={k!r}, l1={l1!r}")
    if activation != "relu" and (k is None or l1 is not None):
        raise UniversalityError(f"activation {activation!r} takes k and not l1, got k={k!r}, l1={l1!r}")
    if k is not None and k > latents:
        raise UniversalityError(f"k = {k} is larger than latents = {latents}; choose k <= latents")
    return activation


def _derive_seed(seed: int, index: int) -> int:
    """An independent 63-bit seed for stream `index` of `seed` (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence(entropy=seed, spawn_key=(index,)).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))
