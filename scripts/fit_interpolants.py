#!/usr/bin/env python3
"""Fit the learned GLOW interpolants that notebook 03's quick mode loads, and save them with their settings.

    python scripts/fit_interpolants.py [--tasks 8gaussians moons] [--out lfm_core/assets] [--steps 800]

For each task: ``interpolants.GlowInterpolant(2, layers=3, hidden=32)`` fitted for straightness by
``straightness.fit_interpolant`` with the settings of ``benchmarks/straight_flows.py`` (seed 0: 800 steps, lr 2e-3,
32 points and 512 reference data points per step, t_max 0.9, gradient clipping at norm 1) on 10 000 points of
``toy.sample(task, generator=torch.Generator().manual_seed(1))``. Writes ``<out>/interpolant_<task>/`` with
``lfm_core.store.save`` (the interpolant's weights and configuration, and a record of the fit's settings, its loss
at the start and the end, its seconds and this command); ``interpolants.load_pretrained(task)`` reads them back.
Each task runs in its own process with one thread; its seconds are recorded in the record.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SETTINGS = dict(layers=3, hidden=32, steps=800, lr=2e-3, batch_size=32, n_reference=512, t_max=0.9, grad_clip=1.0,
                seed=0, n_train=10_000, data_seed=1)


def fit_one(task: str, out: str, steps: int, command: str) -> str:
    import torch

    from lfm_core import interpolants, store, straightness, toy

    torch.set_num_threads(1)
    cfg = dict(SETTINGS, steps=steps)
    data = toy.sample(task, cfg["n_train"], generator=torch.Generator().manual_seed(cfg["data_seed"]))
    torch.manual_seed(cfg["seed"])
    interp = interpolants.GlowInterpolant(2, layers=cfg["layers"], hidden=cfg["hidden"])
    start = time.perf_counter()
    fit = straightness.fit_interpolant(interp, lambda n, g: torch.randn(n, 2, generator=g), data, steps=cfg["steps"],
                                       lr=cfg["lr"], batch_size=cfg["batch_size"], n_reference=cfg["n_reference"],
                                       t_max=cfg["t_max"], grad_clip=cfg["grad_clip"], seed=cfg["seed"],
                                       progress=False)
    seconds = time.perf_counter() - start
    n = max(1, len(fit.losses) // 10)
    meta = {"task": task, "fit": cfg, "straightness_loss_first_tenth": statistics.mean(fit.losses[:n]),
            "straightness_loss_last_tenth": statistics.mean(fit.losses[-n:]), "seconds": round(seconds, 1),
            "threads": 1, "command": command}
    folder = store.save(Path(out) / f"interpolant_{task}", interp, meta)
    return f"{task}: loss {meta['straightness_loss_first_tenth']:.2f} -> {meta['straightness_loss_last_tenth']:.2f}, " \
           f"{seconds:.0f} s -> {folder}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["8gaussians", "moons"])
    parser.add_argument("--out", type=Path, help="default: the package's assets (lfm_core.store.ASSETS)")
    parser.add_argument("--steps", type=int, default=SETTINGS["steps"])
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be positive, got {args.steps}")
    if args.out is None:
        from lfm_core import store

        args.out = store.ASSETS
    command = "python scripts/fit_interpolants.py " + " ".join(sys.argv[1:])
    with ProcessPoolExecutor(max_workers=len(args.tasks)) as pool:
        for line in pool.map(fit_one, args.tasks, [str(args.out)] * len(args.tasks), [args.steps] * len(args.tasks),
                             [command.strip()] * len(args.tasks)):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
