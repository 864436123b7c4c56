"""flowscale_ray: distributed inference-time scaling for pretrained flow models on Ray.

Run a job with `flowscale run JOB.yaml` (or `python -m flowscale_ray run JOB.yaml`); from Python,
`flowscale_ray.run.run_job(flowscale_ray.config.read_job_file(path))`.
"""

__version__ = "0.1.0"
