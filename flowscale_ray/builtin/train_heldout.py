"""Train the held-out counter CNN: `python -m flowscale_ray.builtin.train_heldout --seed 0`.

Data: procedural images, half drawn like the flow model's training data (prompt layouts, evaluation prompts
included: this network judges, it does not generate) and half with a random number (0..8) of objects of
random classes, so that it also learns blank images and same-colour mixes of shapes. Each image is degraded
at random (blur, colour scaling, Gaussian noise) so the counter copes with imperfect generated samples.
Loss: cross-entropy of each class's count (0..8) plus the squared error of the density map against the
objects' centre cells (the positions are known, so the density is supervised directly). The defaults write the shipped
`flowscale_ray/assets/shapes_counter.safetensors`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from flowscale_ray.builtin import shapes
from flowscale_ray.builtin.heldout import DEFAULT_COUNTER_WEIGHTS, CounterConfig, CountNet, save_counter

GRID_CELL = 4  # pixels per cell of the counter's 8x8 density grid


def random_layout(rng: np.random.Generator) -> list[shapes.Group]:
    """0..MAX_TOTAL objects of uniformly random classes."""
    n = int(rng.integers(0, shapes.MAX_TOTAL + 1))
    counts = np.bincount(rng.integers(0, shapes.NUM_CLASSES, size=n), minlength=shapes.NUM_CLASSES)
    return [shapes.Group(int(c), *shapes.CLASSES[i]) for i, c in enumerate(counts) if c > 0]


def make_batch(batch: int, rng: np.random.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Clean images [B, 3, 32, 32], their class counts [B, 8] and object-centre maps [B, 8, 8, 8].

    The centre map has a 1 in the 4x4-pixel cell holding each object's centre, in its class's channel.
    """
    images = np.empty((batch, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3), dtype=np.float32)
    counts = torch.zeros(batch, shapes.NUM_CLASSES, dtype=torch.int64)
    grid = shapes.IMAGE_SIZE // GRID_CELL
    centres = torch.zeros(batch, shapes.NUM_CLASSES, grid, grid)
    for i in range(batch):
        groups = shapes.sample_groups(rng) if rng.random() < 0.5 else random_layout(rng)
        images[i], placed = shapes.render(groups, rng)
        counts[i] = shapes.counts_vector(groups)
        for cls, r, c in placed:
            half = shapes.OBJECT_BOX // 2
            centres[i, cls, (r + half) // GRID_CELL, (c + half) // GRID_CELL] += 1.0
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), counts, centres


def degrade(images: Tensor, gen: torch.Generator) -> Tensor:
    """Random blur, per-image colour scaling and Gaussian noise, clamped to [0, 1]."""
    b = images.shape[0]
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :]) / 16.0
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    amount = torch.rand(b, 1, 1, 1, generator=gen) * (torch.rand(b, 1, 1, 1, generator=gen) < 0.5)
    x = images + amount * (blurred - images)
    x = x * (0.75 + 0.35 * torch.rand(b, 3, 1, 1, generator=gen))
    x = x + 0.15 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x.clamp(0.0, 1.0)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train the held-out counter CNN.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(DEFAULT_COUNTER_WEIGHTS))
    ap.add_argument("--log-every", type=int, default=100)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    net = CountNet(CounterConfig(width=args.width))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    t0 = time.perf_counter()
    running = 0.0
    for step in range(args.steps):
        images, counts, centres = make_batch(args.batch, rng)
        density = net.density_map(degrade(images, gen))
        logits = net.count_logits(density.sum(dim=(2, 3)))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), counts.reshape(-1))
        loss = loss + F.mse_loss(density, centres, reduction="sum") / args.batch
        lr = args.lr * 0.5 * (1.0 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += float(loss.detach())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            n = (step % args.log_every) + 1
            print(f"step {step + 1:5d}  loss {running / n:.4f}  {time.perf_counter() - t0:7.1f} s", flush=True)
            running = 0.0
    train_seconds = time.perf_counter() - t0

    net.eval()
    vrng, vgen = np.random.default_rng(10_000 + args.seed), torch.Generator().manual_seed(10_001 + args.seed)
    images, counts, _ = make_batch(512, vrng)
    with torch.no_grad():
        clean = (net(images).argmax(-1) == counts).all(-1).float().mean().item()
        noisy = (net(degrade(images, vgen)).argmax(-1) == counts).all(-1).float().mean().item()
    facts = {"train_seconds": round(train_seconds, 1), "val_exact_clean": clean, "val_exact_degraded": noisy}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_counter(net, out, {"train": {k: v for k, v in vars(args).items() if k != "out"}, "facts": facts})
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB): {json.dumps(facts)}")


if __name__ == "__main__":
    main()
