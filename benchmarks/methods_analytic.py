"""The paper's Table 1 layout on the analytic task: every method x sampler at the paper's budget.

Task: 8-D four-mode Gaussian mixture (exact velocity), reward = per-dimension log-density of a narrow Gaussian
(variance 0.05) at mode 0; held-out: minus the distance to that mode's centre. 32 prompts (independent seeds).

    .venv/bin/python -m benchmarks.methods_analytic
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import save
from flowscale_ray.core.dynamics import SAMPLER_PRESETS, SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models.gaussian_mixture import gmm_highdim
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.analytic import ModeLogDensity, NegativeDistance
from flowscale_ray.search import METHODS

PROMPTS = 32
METHOD_ORDER = ["base", "bon", "sop", "smc", "code", "svdd", "rbf"]
SAMPLERS = ["linear-ode", "linear-sde", "vp-sde"]


def main() -> None:
    model = gmm_highdim(dim=8, modes=4, seed=0)
    target = model.means[0].tolist()
    reward = ModeLogDensity(mean=target, variance=[0.05] * 8)
    held = NegativeDistance(target=target)
    rows = []
    for name in METHOD_ORDER:
        for preset in SAMPLERS:
            spec = SamplerSpec(**SAMPLER_PRESETS[preset])
            ex = InProcessExecutor(ParticleEngine(model, spec), reward, held, in_flight=PROMPTS)
            method = METHODS[name]()
            t0 = time.perf_counter()
            res = list(ex.run([SearchTask(Prompt(f"p{i}", ""), method, seed=0) for i in range(PROMPTS)]))
            secs = time.perf_counter() - t0
            r = torch.tensor([x.reward for x in res])
            h = torch.tensor([x.held_out for x in res])
            rows.append(
                {
                    "method": name,
                    "sampler": preset,
                    "reward": r.mean().item(),
                    "reward_se": (r.std() / PROMPTS**0.5).item(),
                    "held_out": h.mean().item(),
                    "held_out_se": (h.std() / PROMPTS**0.5).item(),
                    "nfe": res[0].nfe,
                    "seconds": secs,
                }
            )
            print(f"{name:<5} {preset:<10} reward {rows[-1]['reward']:8.3f}  held-out {rows[-1]['held_out']:7.3f}")
    md = [
        f"Analytic task, {PROMPTS} prompts, mean ± standard error (reward higher is better; held-out = -distance).",
        "",
        "| method | sampler | NFE | reward | held-out |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['method']} | {r['sampler']} | {r['nfe']} | {r['reward']:.3f} ± {r['reward_se']:.3f} | "
            f"{r['held_out']:.3f} ± {r['held_out_se']:.3f} |"
        )
    save("methods_analytic", {"prompts": PROMPTS, "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
