"""A tiny training task shared by tests/test_trainer.py and tests/_ddp_worker.py."""

import torch

from lfm_core.nets import MLP
from lfm_core.paths import LinearPath
from lfm_core.training import Trainer, TrainerConfig

BATCH = 8


def make_trainer(steps, out_dir, hidden=16, checkpoint_every=0, loss_scale=1.0, lr=1e-2):
    torch.manual_seed(0)
    model = MLP(2, hidden=hidden)
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(1)) + 3
    path = LinearPath()

    def batch_fn(step, g):
        idx = torch.randint(0, len(data), (BATCH,), generator=g)
        return {"x0": torch.randn(BATCH, 2, generator=g), "x1": data[idx], "t": torch.rand(BATCH, generator=g)}

    def loss_fn(model, x0, x1, t):
        xt, ut = path.sample(x0, x1, t)
        return loss_scale * (model(xt, t) - ut).pow(2).sum(1).mean()

    cfg = TrainerConfig(steps=steps, batch_size=BATCH, lr=lr, warmup=2, ema_decay=0.9,
                        checkpoint_every=checkpoint_every, grad_clip=None)
    return Trainer(model, batch_fn, loss_fn, cfg, out_dir=out_dir, progress=False)
