"""The Ray backend (issue 9 part 7): passes cut into token shards streamed by Ray workers give the
in-process tables, for one pass and many; a worker killed in the middle of a job is replaced, the job
runs again and counts once; a bad batch and a bad address are one line. One embedded Ray (2 CPUs)
serves the module; each test is named for the invariant it checks."""

import ast
import copy
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

import universality  # noqa: E402
from universality import UniversalityError  # noqa: E402
from universality.compare import compare_activations  # noqa: E402
from universality.distributed import Job, JobBoard, check_address  # noqa: E402
from universality.moments import plan_passes  # noqa: E402

from _planned import assert_same_tables, budget_for  # noqa: E402

SETS = (40, 24)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One embedded Ray for the module; this module's functions travel to the workers by value."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


class Batches:
    """batches(start, stop): batch i (`rows` tokens, models a, b, c) is seeded by i, the same on every call.
    Faults, each once (a file in `flags` records it, so the retry runs through): at batch `die_at` the
    worker process exits (os._exit, in the middle of its job); at batch `raise_at` the job raises."""

    def __init__(self, rows=300, flags=None, die_at=None, raise_at=None, nan_at=None):
        self.rows, self.flags, self.die_at, self.raise_at, self.nan_at = rows, flags, die_at, raise_at, nan_at

    def _first_time(self, fault):
        flag = os.path.join(self.flags, fault)
        if os.path.exists(flag):
            return False
        open(flag, "w").close()
        return True

    def __call__(self, start, stop):
        for i in range(start, stop):
            if i == self.die_at and self._first_time("died"):
                os._exit(1)
            if i == self.raise_at and self._first_time("raised"):
                raise RuntimeError("a transient fault")
            g, w = torch.Generator().manual_seed(i), torch.Generator().manual_seed(99)
            latent = torch.randn(self.rows, 6, generator=g)
            batch = {m: {f"s{k}": latent @ torch.randn(6, n, generator=w) + torch.randn(self.rows, n, generator=g) + 5
                         for k, n in enumerate(SETS)} for m in "abc"}
            if i == self.nan_at:
                batch["b"]["s1"][3, 2] = float("nan")
            yield batch


def _budget_for(passes, batch_tokens=300):
    """The smallest budget that plans `passes` passes (float64, 2 rotations)."""
    return budget_for({m: {f"s{k}": n for k, n in enumerate(SETS)} for m in "abc"}, passes, batch_tokens=batch_tokens)


def test_one_pass_on_ray_equals_the_in_process_run():
    make = Batches()
    local = compare_activations(lambda: make(0, 10), rotations=2)
    on_ray = compare_activations(make, backend="ray", batch_count=10, rotations=2)
    assert on_ray.moments.count_ == local.moments.count_ == 3000 and len(on_ray.plan.passes) == 1
    assert_same_tables(local, on_ray)


def test_many_passes_on_ray_equal_the_in_process_run_and_a_zero_argument_callable_is_counted():
    make = Batches()
    budget = _budget_for(3)
    local = compare_activations(lambda: make(0, 9), rotations=2, memory_budget=budget)
    on_ray = compare_activations(lambda: make(0, 9), backend="ray", rotations=2, memory_budget=budget)
    assert len(on_ray.plan.passes) == len(local.plan.passes) >= 3
    assert on_ray.moments.count_ == 2700
    assert_same_tables(local, on_ray)


def test_a_worker_killed_mid_job_and_a_job_that_raised_run_again_and_count_once(tmp_path):
    local = compare_activations(lambda: Batches()(0, 12), rotations=2)
    # two shards, batches 0..5 and 6..11: the first raises at batch 3, the worker of the second dies at batch 8
    # (after adding 6 and 7); both jobs run again, and each shard's tokens count once
    faulty = Batches(flags=str(tmp_path), die_at=8, raise_at=3)
    on_ray = compare_activations(faulty, backend="ray", batch_count=12, rotations=2)
    assert (tmp_path / "died").exists() and (tmp_path / "raised").exists()  # both faults did happen
    assert on_ray.moments.count_ == local.moments.count_ == 3600
    assert_same_tables(local, on_ray)


def test_a_bad_batch_on_a_worker_is_one_line_and_not_retried():
    with pytest.raises(UniversalityError) as error:
        compare_activations(Batches(nan_at=7), backend="ray", batch_count=10)
    message = str(error.value)
    assert "\n" not in message and "batch 7" in message and "NaN" in message and "failed" not in message


def test_a_job_result_is_recorded_once_and_a_spent_job_is_one_line():
    jobs = [Job(0, 0, 5), Job(0, 5, 10)]
    board = JobBoard(jobs, passes=1, retries=1)
    first, second = board.next(), board.next()
    assert board.record(first, "a") and not board.record(first, "again")  # a second run of a job is dropped
    board.failed(first, "late failure of a finished job")
    assert board.waiting == []  # ... and a finished job is not run again
    board.failed(second, "worker died")
    assert board.next() == second and not board.finished
    with pytest.raises(UniversalityError, match=r"^batches 5\.\.9 failed 2 times, last: worker died again$"):
        board.failed(second, "worker died again")
    board.record(second, "b")
    assert board.finished and board.results() == ["a", "b"]


def test_ray_is_imported_only_inside_functions_so_importing_universality_never_loads_it():
    package = Path(universality.__file__).parent
    for path in package.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module-level statements only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "ray" or n.startswith("ray.") for n in names), path


def test_bad_ray_addresses_are_one_line():
    for address, needle in (("127.0.0.1:1", "does not answer"), ("nowhere", "is not 'host:port'")):
        with pytest.raises(UniversalityError, match=needle) as error:
            check_address(address)
        assert "\n" not in str(error.value)


def test_a_run_whose_ray_address_does_not_answer_exits_2_in_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "ray.toml").write_text('name = "far"\n[scale]\nbackend = "ray"\naddress = "127.0.0.1:1"\n')
    done = subprocess.run([sys.executable, "-m", "universality.cli", "run", "ray.toml", "--runs-dir", "runs"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "does not answer" in lines[0], done.stderr
    assert not (tmp_path / "runs").exists()


def test_a_pretrained_run_on_ray_gives_the_in_process_tables_and_top_activations(tmp_path):
    from _hf_tiny import SENTENCES, build, permute_mlp

    from universality.api import run_experiment
    from universality.config import parse_config
    from universality.moments import load_moments
    model, tokenizer = build("gpt2", tmp_path / "a", seed=0)
    twin = copy.deepcopy(model)
    permute_mlp(twin, "gpt2", [torch.randperm(128, generator=torch.Generator().manual_seed(l)) for l in range(2)])
    twin.save_pretrained(tmp_path / "b")
    tokenizer.save_pretrained(tmp_path / "b")
    (tmp_path / "text.txt").write_text("\n".join(SENTENCES * 20))
    layout = {m: {f"blocks.{l}.mlp.hook_post": 128 for l in range(2)} for m in "ab"}
    one = plan_passes(layout, budget=None, batch_tokens=128)
    budget = sum(one.resident.values()) + 128 * 256 * 4 + 1  # room for half the cross blocks: 2 passes
    results = {}
    for backend in ("local", "ray"):
        config = parse_config({"kind": "pretrained", "name": backend, "models": [str(tmp_path / m) for m in "ab"],
                               "data": {"source": str(tmp_path / "text.txt"), "seq_len": 16, "rows": 40},
                               "collect": {"batch_rows": 8}, "scale": {"backend": backend, "memory_budget": budget}})
        results[backend] = run_experiment(config, runs_dir=tmp_path / "runs")
    local, on_ray = results["local"].comparison, results["ray"].comparison
    assert len(on_ray.plan.passes) > 1 and on_ray.moments.count_ == local.moments.count_
    assert_same_tables(local, on_ray)
    tops = [load_moments(results[b].run_dir / "moments")[1]["companions"] for b in ("local", "ray")]
    assert tops[0].keys() == tops[1].keys() and len(tops[0]) > 3
    for name, value in tops[0].items():  # the models' float32 forward rounds by thread count (1 per worker)
        torch.testing.assert_close(tops[1][name], value, rtol=0, atol=1e-5 if value.is_floating_point() else 0)
