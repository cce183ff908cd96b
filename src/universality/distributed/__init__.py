"""Jobs on Ray (DESIGN.md, "Scale: blocks, passes, jobs"): the passes of a plan cut into token shards,
each streamed by a worker (one Ray actor per device, which builds its models once), returned as plain
numpy arrays and merged on the driver by Chan's update; a failed job runs again and a job's result
counts once. `backend = "ray"` in `compare_activations` and in a run's `[scale]`.

Ray is optional (`pip install 'universality[ray]'`); importing this package does not import it.
"""

from ._cluster import check_address, ray_session
from ._compare import compare_on_ray
from ._jobs import RETRIES, Job, JobBoard, shard_jobs
from ._ray_passes import RayPasses, pass_streamer
from ._sources import ActivationSource, BatchSource, pretrained_models, trained_models
from ._state import accumulator_from_arrays, merge_tree, state_arrays
from ._worker import SourceFactory, Worker, run_job

__all__ = ["check_address", "ray_session", "compare_on_ray", "RETRIES", "Job", "JobBoard", "shard_jobs", "RayPasses",
           "pass_streamer", "ActivationSource", "BatchSource", "pretrained_models", "trained_models",
           "accumulator_from_arrays", "merge_tree", "state_arrays", "SourceFactory", "Worker", "run_job"]
