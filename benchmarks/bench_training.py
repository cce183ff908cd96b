"""Is training K seeds as one vmapped ensemble faster than training them one after another?

Both sides run the same work: K seeds x `STEPS` AdamW steps of the demo model (d_model 64,
2 layers, d_mlp 256) on batches of 32 rows x 64 tokens, on `THREADS` threads.

1. sequential: `train_seed`'s loop, one model after another (K x STEPS optimizer steps);
2. ensemble: the K models' parameters stacked (`torch.func.stack_module_state`), one
   `vmap(functional_call)` forward and backward per step, one AdamW over the stacked tensors.

Each side is timed `REPEATS` times (seeded, after one warm-up step); steps/s counts one step of
one seed, so the two rates compare directly. The last line printed is JSON:
`{"seeds", "sequential_steps_per_s", "ensemble_steps_per_s", "speedup"}` (speedup > 1: ensemble wins).

Run: `.venv/bin/python benchmarks/bench_training.py`
"""

from __future__ import annotations

import copy
import json
import statistics
import time

import torch
from torch.func import functional_call, stack_module_state, vmap

from universality.config import load_config
from universality.models import TinyTransformer
from universality.tasks import SyntheticLanguage
from universality.train import learning_rate, training_batches
from universality.train._seeds import BETAS, _adamw, next_token_loss

SEEDS = [0, 1, 2, 3]
STEPS = 30
REPEATS = 3
THREADS = 2


def sequential_seconds(language, config, batches) -> float:
    """Seconds for STEPS steps of each seed, one seed after another."""
    total = 0.0
    for seed in SEEDS:
        model = TinyTransformer(config.model, vocab_size=language.vocab_size,
                                n_ctx=language.config.seq_len, seed=seed)
        optimizer = _adamw(model, config.train)
        for step in range(STEPS + 1):  # step 0 warms up and is not timed
            if step == 1:
                start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config.train)
            tokens = batches[seed][step]  # [batch, seq_len]
            loss = next_token_loss(model(tokens), tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
        total += time.perf_counter() - start
    return total


def ensemble_seconds(language, config, batches) -> tuple[float, list[float]]:
    """Seconds for STEPS steps of all seeds at once, and each seed's loss at step 0."""
    models = [TinyTransformer(config.model, vocab_size=language.vocab_size,
                              n_ctx=language.config.seq_len, seed=seed) for seed in SEEDS]
    params, buffers = stack_module_state(models)  # name -> [seeds, ...]
    template = copy.deepcopy(models[0]).to("meta")

    def one_loss(p, b, tokens):  # tokens [batch, seq_len] -> scalar
        return next_token_loss(functional_call(template, (p, b), (tokens,)), tokens)

    all_losses = vmap(one_loss)  # ([seeds, ...], [seeds, batch, seq_len]) -> [seeds]
    # weight decay on matrices only, as in `_adamw`; a stacked matrix has dim 3
    decay = [p for p in params.values() if p.dim() >= 3]
    no_decay = [p for p in params.values() if p.dim() < 3]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.train.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=config.train.lr, betas=BETAS)
    first_losses: list[float] = []
    for step in range(STEPS + 1):
        if step == 1:
            start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.train)
        tokens = torch.stack([batches[seed][step] for seed in SEEDS])  # [seeds, batch, seq_len]
        losses = all_losses(params, buffers, tokens)  # [seeds]
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # seeds share no parameters: each gets its own gradient
        optimizer.step()
        if step == 0:
            first_losses = losses.tolist()
        losses.tolist()
    return time.perf_counter() - start, first_losses


def flops_per_step(config) -> float:
    """Forward + backward FLOPs of one seed's step: 6 x matmul params x tokens, plus attention."""
    m, rows, seq = config.model, config.train.batch_size, config.language.seq_len
    matmul_params = m.n_layers * (4 * m.d_model**2 + 2 * m.d_model * m.d_mlp)
    attention = m.n_layers * 4 * rows * seq**2 * m.d_model  # QK^T and pattern @ V, forward
    return 6 * matmul_params * rows * seq + 3 * attention  # unembedding left out: small


def gemm_gflops(size: int = 1024, repeats: int = 10) -> float:
    """Measured float32 GEMM rate on THREADS threads: the peak the training step is set against."""
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    a @ a
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    torch.set_num_threads(THREADS)
    config = load_config()  # the embedded demo config
    config = config.model_copy(update={"train": config.train.model_copy(update={"steps": STEPS + 1})})
    language = SyntheticLanguage(config.language)
    batches = {seed: list(training_batches(language, config.train, seed)) for seed in SEEDS}
    sequential, ensemble = [], []
    for repeat in range(REPEATS):
        sequential.append(sequential_seconds(language, config, batches))
        seconds, first_losses = ensemble_seconds(language, config, batches)
        ensemble.append(seconds)
        print(f"repeat {repeat}: sequential {sequential[-1]:.2f} s, ensemble {ensemble[-1]:.2f} s")
    reference = [next_token_loss(model(batches[seed][0]), batches[seed][0]).item()
                 for seed, model in ((s, TinyTransformer(config.model, vocab_size=language.vocab_size,
                                                         n_ctx=language.config.seq_len, seed=s))
                                     for s in SEEDS)]
    print("first-step losses, sequential:", [round(x, 6) for x in reference])
    print("first-step losses, ensemble:  ", [round(x, 6) for x in first_losses])
    steps = len(SEEDS) * STEPS
    sequential_rate = steps / statistics.median(sequential)
    ensemble_rate = steps / statistics.median(ensemble)
    gflops = flops_per_step(config) * sequential_rate / 1e9
    print(f"sequential: {gflops:.1f} GFLOP/s, {100 * gflops / gemm_gflops():.0f}% of the 1024^3 GEMM rate")
    print(json.dumps({
        "seeds": len(SEEDS),
        "sequential_steps_per_s": round(sequential_rate, 2),
        "ensemble_steps_per_s": round(ensemble_rate, 2),
        "speedup": round(ensemble_rate / sequential_rate, 3),
    }))


if __name__ == "__main__":
    main()
