"""Benchmarks of the Ray runtime, kept out of the production packages.

`command` is `flowscale bench`, `measure` holds the measurements (overhead against a plain torch loop, scaling
over replica counts), `delay` the GPU stand-in replica the scaling run uses.
"""
