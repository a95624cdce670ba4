"""A tiny training task shared by tests/test_trainer.py, tests/test_kill.py and tests/_ddp_worker.py."""

import sys

import numpy as np
import torch

from lfm_core.nets import MLP
from lfm_core.paths import LinearPath
from lfm_core.trainer import Trainer, TrainerConfig

BATCH = 8


def make_trainer(steps, out_dir, hidden=16, checkpoint_every=0, loss_scale=1.0, lr=1e-2, global_rng=False, **config):
    """A CFM task on a 2D MLP. ``global_rng``: the loss also draws from torch's and numpy's global generators
    (as dropout or user code would), which a resume must restore too."""
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - the global generator the loss draws from
    model = MLP(2, hidden=hidden)
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(1)) + 3
    path = LinearPath()

    def batch_fn(step, g):
        idx = torch.randint(0, len(data), (BATCH,), generator=g)
        return {"x0": torch.randn(BATCH, 2, generator=g), "x1": data[idx], "t": torch.rand(BATCH, generator=g)}

    def loss_fn(model, x0, x1, t):
        if global_rng:
            jitter = 0.01 * torch.randn_like(x0) + 0.01 * float(np.random.standard_normal())  # noqa: NPY002
            x0 = x0 + jitter
        xt, ut = path.sample(x0, x1, t)
        return loss_scale * (model(xt, t) - ut).pow(2).mean()

    settings = dict(steps=steps, batch_size=BATCH, lr=lr, warmup=2, ema_decay=0.9, checkpoint_every=checkpoint_every,
                    grad_clip=None)
    settings.update(config)
    return Trainer(model, batch_fn, loss_fn, TrainerConfig(**settings), out_dir=out_dir, progress=False)


if __name__ == "__main__":  # used by tests/test_kill.py: train with a checkpoint every step until killed
    out, steps = sys.argv[1], int(sys.argv[2])
    trainer = make_trainer(steps, out, checkpoint_every=1, global_rng=True)
    print("ready", flush=True)
    trainer.fit()
