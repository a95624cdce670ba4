#!/usr/bin/env python3
"""Train the few-step methods of notebooks 03 and 07 on the 2D tasks, for their quick modes to load and continue.

    python scripts/train_straight_flows.py [--tasks 8gaussians moons] [--out lfm_core/assets] [--steps 2000]
    python scripts/train_straight_flows.py --methods MeanFlow --name one_step     # notebook 07's MeanFlow models

For each task: ``compare.train_methods`` with the settings of ``benchmarks/straight_flows.py`` (seed 0: MLP 3 x 64,
2000 CFM steps of batch 256, AdamW lr 1e-3 with a cosine decay, 10 000 reflow pairs for 2-RF), on 10 000 points of
``toy.sample(task, generator=torch.Generator().manual_seed(1))``, the learned method on the interpolant that
``scripts/fit_interpolants.py`` fitted (``interpolants.load_pretrained``). Writes
``<out>/straight_flows_<task>/<method>/`` (``compare.save_pretrained``: one ``lfm_core.store`` folder per method,
whose record holds the settings, the method's training seconds (the interpolant's fit not included: notebook 03
adds it) and this command).

``--methods MeanFlow`` trains ``average_velocity.AverageVelocity(nets.MLP(2, 64, 3, cond_channels=1))`` with the
settings of the ``MeanFlow p=0`` rows of ``benchmarks/one_step.py`` (:data:`MEANFLOW`: 4000 steps, the paper's
time pairs, plain squared error), written to ``<out>/<name>_<task>/MeanFlow/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lfm_core import average_velocity, compare, interpolants, nets, store, toy

SETTINGS = dict(steps=2000, batch_size=256, lr=1e-3, seed=0, reflow_pairs=10_000, n_train=10_000, data_seed=1,
                hidden=64, depth=3)
MEANFLOW = dict(steps=4000, power=0.0)   # train_meanflow's arguments besides SETTINGS' batch, lr and seed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(interpolants.PRETRAINED_TASKS))
    parser.add_argument("--out", type=Path, default=store.ASSETS)
    parser.add_argument("--steps", type=int, default=SETTINGS["steps"], help="CFM steps of the four flow methods")
    parser.add_argument("--methods", nargs="+", choices=compare.ONE_STEP_METHODS, default=list(compare.METHODS))
    parser.add_argument("--name", default="straight_flows", help="folder name prefix: <out>/<name>_<task>/")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be positive, got {args.steps}")
    cfg = dict(SETTINGS, steps=args.steps, methods=args.methods)
    if "MeanFlow" in args.methods:
        cfg["meanflow"] = MEANFLOW
    command = ("python scripts/train_straight_flows.py " + " ".join(sys.argv[1:])).strip()
    for task in args.tasks:
        data = toy.sample(task, cfg["n_train"], generator=torch.Generator().manual_seed(cfg["data_seed"]))
        interp, fit_record = interpolants.load_pretrained(task) if "learned" in args.methods else (None, None)
        models, seconds = compare.train_methods(
            lambda: nets.MLP(2, cfg["hidden"], cfg["depth"]), lambda n, g: torch.randn(n, 2, generator=g), data,
            methods=args.methods, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=cfg["seed"],
            interpolant=interp, interpolant_seconds=0.0, reflow_pairs=cfg["reflow_pairs"], progress=False,
            make_average_model=lambda: average_velocity.AverageVelocity(
                nets.MLP(2, cfg["hidden"], cfg["depth"], cond_channels=1)), meanflow=MEANFLOW)
        folder = args.out / f"{args.name}_{task}"
        compare.save_pretrained(folder, models, seconds, {"task": task, "settings": cfg, "command": command,
                                                          "interpolant": fit_record and fit_record["command"],
                                                          "torch_threads": torch.get_num_threads()})
        print(f"{task}: " + ", ".join(f"{m} {s:.1f} s" for m, s in seconds.items()) + f" -> {folder}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
