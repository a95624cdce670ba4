"""Run by tests/test_trainer.py under torchrun (2 processes, gloo): train a few steps, save each rank's weights."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer_task import make_trainer  # noqa: E402

from lfm_core.devices import dist_info, init_distributed  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    init_distributed()
    rank, world = dist_info()
    print(f"rank {rank}/{world}: initialised", flush=True)
    trainer = make_trainer(steps=5, out_dir=None)
    trainer.fit(resume=False)
    print(f"rank {rank}: trained", flush=True)
    torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, out / f"rank{rank}.pt")
    torch.save({"world": world, "losses": trainer.losses}, out / f"meta{rank}.pt")
    torch.distributed.destroy_process_group()
