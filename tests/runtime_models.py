"""Misbehaving models for the runtime's fault tests (named as 'tests.runtime_models:factory' in specs)."""

import os
import time
from pathlib import Path

from flowscale_ray.models.gaussian_mixture import GaussianMixtureFlow, gmm2d


class _Faulty(GaussianMixtureFlow):
    def __init__(self, mode: str, marker: str | None) -> None:
        base = gmm2d()
        super().__init__(base.means, base.variances, base.weights, model_id="faulty")
        self.mode, self.marker = mode, marker

    def velocity(self, x, t, cond):
        if self.mode == "crash":
            os._exit(3)  # the process dies on every model call
        if self.mode == "hang_once" and self.marker and not Path(self.marker).exists():
            Path(self.marker).write_text("hung")
            time.sleep(3600)
        return super().velocity(x, t, cond)


def crashing(marker: str | None = None) -> GaussianMixtureFlow:
    return _Faulty("crash", marker)


def hang_once(marker: str) -> GaussianMixtureFlow:
    return _Faulty("hang_once", marker)


def broken(reason: str = "weights folder /models/flux is missing") -> GaussianMixtureFlow:
    raise FileNotFoundError(reason)
