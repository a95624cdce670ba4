#!/usr/bin/env python3
"""One run of notebook 03's learned-interpolant method on a 2D task, with every setting as a flag.

    python scripts/probe_straight_flows.py --interpolant glow        # 400 steps, 32 x 512, t_max 0.9, clip 1
    python scripts/probe_straight_flows.py --interpolant linear          # the I-CFM baseline

Fits the interpolant for straightness (lfm_core.straightness.fit_interpolant), prints the straightness of its
closed-form optimal velocity on a fixed batch before and after, then trains an MLP velocity (3 x 64, SELU)
by CFM on the interpolant for --cfm-steps steps and prints W2 to 1000 held-out points after 1, 2, 4, 8 and 100
Euler steps. Source N(0, I); 10k training points of --task (seeded).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from lfm_core import interpolants as I
from lfm_core import metrics, nets, paths, solvers, toy, training
from lfm_core import straightness as S


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="8gaussians", choices=["8gaussians", "moons"])
    p.add_argument("--interpolant", default="glow", choices=["linear", "affine", "glow"])
    p.add_argument("--steps", type=int, default=400, help="straightness steps")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--t-max", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--refs", type=int, default=512)
    p.add_argument("--weight-power", type=float, default=0.0, help="weight |Dv*/Dt|^2 by (1 - t)^k")
    p.add_argument("--grad-clip", type=float, default=1.0, help="0 turns clipping off")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--cfm-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tails", action="store_true",
                   help="only print mean and max |Dv*/Dt|^2 of the straight line over 256 references, per time")
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    train = toy.sample(a.task, 10000, generator=torch.Generator().manual_seed(a.seed + 1))
    test = toy.sample(a.task, 1000, generator=torch.Generator().manual_seed(a.seed + 2))

    def src(n, g):
        return torch.randn(n, 2, generator=g)

    if a.tails:
        line, g = I.AffineInterpolant(6), torch.Generator().manual_seed(0)  # fresh: exactly the straight line
        for t0 in [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95]:
            x0, x1 = torch.randn(256, 2, generator=g), train[torch.randint(0, len(train), (256,), generator=g)]
            t = torch.full((256,), t0)
            with torch.no_grad():
                xt, _ = line.sample(x0, x1, t)
                _, dv = S.material_derivative(S.optimal_velocity(line, train[:256]), xt, t)
            d = dv.pow(2).sum(1)
            print(f"t = {t0:4.2f}: |Dv*/Dt|^2 mean {float(d.mean()):12.1f}, median {float(d.median()):10.2f}, "
                  f"max {float(d.max()):12.1f}")
        return 0
    start = time.perf_counter()
    if a.interpolant == "linear":
        interp = paths.LinearPath(0.0)
    else:
        interp = (I.AffineInterpolant(6) if a.interpolant == "affine"
                  else I.GlowInterpolant(2, layers=a.layers, hidden=32))
        z = torch.randn(512, 2, generator=torch.Generator().manual_seed(5))
        tt = torch.rand(512, generator=torch.Generator().manual_seed(6)) * a.t_max

        def straightness():
            with torch.no_grad():
                xt, _ = interp.sample(z, train[:512], tt)
                return float(S.straightness_loss(S.optimal_velocity(interp, train[:1024]), xt, tt))

        before = straightness()
        S.fit_interpolant(interp, src, train, steps=a.steps, lr=a.lr, t_max=a.t_max, batch_size=a.batch,
                          n_reference=a.refs, progress=False, seed=a.seed, weight_power=a.weight_power,
                          grad_clip=a.grad_clip or None)
        print(f"straightness of v* on a fixed batch: {before:.2f} -> {straightness():.2f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        interp.requires_grad_(False)
    model = nets.MLP(2, 64, 3)
    training.train_cfm(model, interp, src, train, steps=a.cfm_steps, lr=1e-3, lr_schedule="cosine", progress=False,
                       seed=a.seed)
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        w2 = {n: metrics.wasserstein2(solvers.integrate(model, z, method="euler", steps=n).x, test)
              for n in [1, 2, 4, 8, 100]}
    print(f"{a.interpolant} on N -> {a.task}: W2 after 1/2/4/8/100 Euler steps "
          + " / ".join(f"{v:.3f}" for v in w2.values()) + f" ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
