"""Run by tests/test_kill.py: work that writes to disk (checkpoints or the latent cache), killed with SIGKILL at
random moments.

    python tests/kill_task.py {checkpoints|cache} OUT TRIES SEED

Imports once, then for each try forks a child that trains with a checkpoint every step (or encodes into the
latent cache again and again) into OUT/try-<i>, and kills it after a random delay. Forking after the imports
keeps the tries fast.
"""

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import lfm_core  # noqa: E402, F401 - imported before forking, so each child starts at once


def prepare(kind: str):
    """Import and build what the children need, once. The launcher runs with OMP_NUM_THREADS=1, so torch starts
    no thread pool here and the forked children are safe."""
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # its first use imports much of torch
    if kind == "cache":
        from cache_task import autoencoder_and_data

        return autoencoder_and_data()
    return ()


def train_forever(out: Path, *_):
    from trainer_task import make_trainer

    make_trainer(10**9, out, checkpoint_every=1, global_rng=True).fit()


def encode_forever(out: Path, ae, data):
    from lfm_core import latent_cache

    while True:
        latent_cache.cached_latents(ae, data, out, overwrite=True)


def main():
    kind, out, tries, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    work = {"checkpoints": train_forever, "cache": encode_forever}[kind]
    shared = prepare(kind)
    rng = random.Random(seed)
    delays = []
    for i in range(tries):
        folder = out / f"try-{i}"
        pid = os.fork()
        if pid == 0:  # the child: work until killed
            try:
                work(folder, *shared)
            finally:
                os._exit(1)
        delay = rng.uniform(0.1, 0.6)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        delays.append(delay)
    print(json.dumps({"delays": delays}), flush=True)


if __name__ == "__main__":
    main()
