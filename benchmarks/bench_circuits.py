"""Attribution patching against activation patching of every head, on the same IOI prompts.

1. train one tiny transformer (2 layers x 4 heads, d_model 64) on the synthetic language with half of each
   batch IOI prompts (`TrainConfig.ioi_fraction = 0.5`), seed 0; report its IOI accuracy and logit difference;
2. on `--prompts` clean / corrupted prompts (S2 := IO), metric = IO - S logit difference: time attribution
   patching (3 passes) and activation patching (one forward per head and MLP), best of `--repeats`;
   Spearman rank correlation over heads, signed and of |values|;
3. the same timing on a random-weights larger TinyTransformer (4 layers x 8 heads, d_model 256), where the
   number of heads, and so activation patching's cost, is larger (its rank correlation is not meaningful);
4. the trained model's head roles;
5. steering (`bench_steering.py`, run as its own process): success of the ground-truth irreps rotation, a
   single steering vector and the learned nonlinear f on grokked C_29 seeds.

Last line: a JSON object with `attribution_speedup` (the trained model), `rank_correlation` (signed, heads),
`ground_truth_steering_success`, `steering_vector_success`, `learned_nonlinear_success` and the other figures.

    PYTHONPATH=src python benchmarks/bench_circuits.py [--steps 2500] [--prompts 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from universality.circuits import (activation_patching, attribution_patching, classify_heads, head_role_scores,
                                   rank_correlation)
from universality.config import LanguageConfig, ModelConfig, TrainConfig
from universality.models import TinyAdapter, TinyTransformer
from universality.tasks import IOITask, SyntheticLanguage, ioi_metrics, logit_difference
from universality.train import train_seed


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def compare(adapter, prompts, repeats: int) -> dict:
    def metric(logits):
        return logit_difference(logits, prompts)
    t_attr, attribution = best_time(lambda: attribution_patching(adapter, prompts.clean, prompts.corrupt, metric),
                                    repeats)
    t_act, effect = best_time(lambda: activation_patching(adapter, prompts.clean, prompts.corrupt, metric), repeats)
    return {"heads": adapter.n_layers * adapter.n_heads, "attribution_seconds": t_attr,
            "activation_seconds": t_act, "speedup": t_act / t_attr,
            "rank_correlation": rank_correlation(attribution, effect),
            "rank_correlation_abs": rank_correlation(attribution, effect, absolute=True),
            "table": attribution.merge(effect)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    language = SyntheticLanguage(LanguageConfig())
    task = IOITask(language)
    prompts = task.prompts(args.prompts, seed=7)
    start = time.perf_counter()
    trained = train_seed(language, ModelConfig(d_model=64, n_layers=2, n_heads=4, d_mlp=256),
                         TrainConfig(steps=args.steps, ioi_fraction=0.5, threads=1), seed=0)
    train_seconds = time.perf_counter() - start
    adapter = TinyAdapter(trained.model, bos_token_id=language.bos)
    task_scores = ioi_metrics(adapter, prompts)
    print(f"trained {args.steps} steps in {train_seconds:.0f} s, final loss {trained.curve[-1]['loss']:.3f}; "
          f"IOI: {task_scores}")

    small = compare(adapter, prompts, args.repeats)
    print(small.pop("table").round(4).to_string(index=False))
    print("trained 2x4:", {k: round(v, 4) for k, v in small.items()})

    large_model = TinyTransformer(ModelConfig(d_model=256, n_layers=4, n_heads=8, d_mlp=1024),
                                  vocab_size=language.vocab_size, n_ctx=language.config.seq_len, seed=1)
    large = compare(TinyAdapter(large_model, bos_token_id=language.bos), prompts, args.repeats)
    large.pop("table")
    print("random 4x8:", {k: round(v, 4) for k, v in large.items()})

    scores = head_role_scores(adapter, prompts)
    print(scores.round(3).to_string(index=False))
    print(classify_heads(scores).round(3).to_string(index=False))

    # steering's figures (issue 12's benchmark keys) from its own script, in its own process
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "bench_steering.py")],
                          capture_output=True, text=True, check=True)
    steering = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({**steering, "attribution_speedup": round(small["speedup"], 2),
                      "rank_correlation": round(small["rank_correlation"], 3),
                      "rank_correlation_abs": round(small["rank_correlation_abs"], 3),
                      "attribution_speedup_random_4x8": round(large["speedup"], 2),
                      "ioi_accuracy": round(task_scores["accuracy"], 3),
                      "ioi_logit_diff": round(task_scores["logit_diff"], 3),
                      "train_steps": args.steps, "prompts": args.prompts}))


if __name__ == "__main__":
    main()
