"""The Ray runtime: flow-model replica actors, a central driver, continuous batching, fault tolerance.

This is the only layer that imports Ray. The search methods and the particle engine are the same ones the
in-process executor uses; the driver only decides where each request runs. Submodules: `placement` (pure
scheduling), `replica` (the model actor), `delay` (a GPU stand-in for benchmarks), `driver` (RayExecutor).
"""
