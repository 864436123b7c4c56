"""Running a job, one module per concern.

components   build the prompts, model and rewards a job names (and the sampler's resolution shift)
executors    open the executor the job asks for (in-process or Ray) and close it
identity     what determines a run's rows (hashed for resume) and what its manifest records
output       RunOutput: the one object the loop writes through (rows, shards, manifest)
loop         run_job: every prompt through the executor, failures isolated to their prompt
baselines    compare_with: baselines run beside the job, side by side
tables       text tables for people
validate     `flowscale validate`
"""

from flowscale_ray.run.baselines import run_with_baselines
from flowscale_ray.run.components import build_components, load_prompts, resolve_sampler_shift
from flowscale_ray.run.loop import RunReport, run_job, run_prompts
from flowscale_ray.run.output import RunOutput
from flowscale_ray.run.validate import validate_job

__all__ = [
    "RunOutput",
    "RunReport",
    "build_components",
    "load_prompts",
    "resolve_sampler_shift",
    "run_job",
    "run_prompts",
    "run_with_baselines",
    "validate_job",
]
