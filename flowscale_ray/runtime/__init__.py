"""The Ray runtime: flow-model replica actors, a central driver, continuous batching, fault tolerance.

This is the only production layer that imports Ray (the benchmarks in flowscale_ray/benchmark/ do too). The
search methods and the particle engine are the same ones the in-process executor uses; the driver only decides
where each request runs. Submodules: `driver` (RayExecutor), `scheduler` (one run's state and its event
handlers), `calls` (the calls in flight), `placement` (pure scheduling), `replica` (the model actor),
`protocol` (what the driver calls on a replica), `reward_pool` and `rewarder` (optional reward actors),
`options` (RuntimeOptions, RuntimeFailure), `cluster` (start_ray), `messages` (what replicas send back).
"""
