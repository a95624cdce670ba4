#!/usr/bin/env python3
"""Train a latent flow matching model: one CPU, one GPU, or N GPUs under torchrun, with the same command.

    python scripts/train_latent.py --data lfw_faces --size 32 --autoencoder offline --model unet-tiny \\
        --steps 2000 --batch 64 --out runs/faces                      # CPU, offline
    torchrun --nproc_per_node 4 scripts/train_latent.py --data celeba_hq --size 256 \\
        --autoencoder stabilityai/sd-vae-ft-mse --model DiT-B/2 --steps 200000 --batch 256 --lr 1e-4 \\
        --out runs/celeba                                             # 4 GPUs, hub data and autoencoder

The data set is encoded once into a latent cache (``--cache``, default ``<out>/latents``), then a velocity
network (``unet-<preset>`` or a DiT preset) is trained by conditional flow matching on the straight path
from N(0, I) to the latents (``lfm_core.paths.LinearPath``; this project's time runs from noise at t = 0 to
data at t = 1, the reverse of the LFM paper's). Class labels, when the data has them and ``--classes``
is given, are dropped into the null label with probability ``--label-dropout`` for classifier-free
guidance. Training is ``lfm_core.training.train_cfm`` (the Trainer): checkpoints (``--checkpoint-every``) let
an interrupted run resume with the same command, and a run with other settings is refused unless
``--override``; sample grids are written every ``--sample-every`` steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from lfm_core import autoencoders, devices, images, latent_cache, nets, paths, runtime, solvers, training


def build_model(name: str, channels: int, size: int, num_classes: int | None):
    if name.startswith("unet-"):
        return nets.UNetVelocity(channels, size, preset=name[5:], num_classes=num_classes)
    return nets.DiTVelocity(channels, size, preset=name, num_classes=num_classes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="lfw_faces", choices=images.NAMES)
    p.add_argument("--size", type=int, default=32, help="image size (pixels)")
    p.add_argument("--limit", type=int, help="use only the first LIMIT images")
    p.add_argument("--autoencoder", default="offline", help="'offline', a hub id or a local diffusers folder")
    p.add_argument("--model", default="unet-tiny",
                   help=f"unet-<{'|'.join(nets.UNET_PRESETS)}> or one of {', '.join(nets.DIT_PRESETS)}")
    p.add_argument("--classes", action="store_true", help="condition on the data set's labels")
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64, help="global batch size")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=devices.PRECISIONS,
                   help="auto: bf16 on GPUs that have it, else fp16 with a gradient scaler; fp32 on a CPU")
    p.add_argument("--override", action="store_true",
                   help="resume a run whose checkpoints used other settings, applying the new ones")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cache", type=Path)
    args = p.parse_args(argv)

    rank, world = devices.init_distributed()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    runtime.seed_everything(args.seed)
    ae = autoencoders.load(args.autoencoder, device=device)
    data = images.load(args.data, size=args.size, limit=args.limit)
    if data.images.shape[1] != ae.in_channels:  # grayscale data into an RGB autoencoder, or the reverse
        data.images = data.images.mean(1, keepdim=True).expand(-1, ae.in_channels, -1, -1).contiguous()
    cache = args.cache or args.out / "latents"
    if rank == 0:
        latents, labels = latent_cache.cached_latents(ae, data, cache)
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        latents, labels = latent_cache.cached_latents(ae, data, cache, read_only=True)
    num_classes = data.num_classes if args.classes else None
    if num_classes and labels is None:
        p.error(f"--classes: the data set {args.data} has no labels")
    c, h = latents.shape[1], latents.shape[-1]
    model = build_model(args.model, c, h, num_classes).to(device)

    def noise(n, g):
        return torch.randn(n, c, h, h, generator=g)

    @torch.no_grad()
    def sample_fn(ema):
        z0 = torch.randn(16, c, h, h, generator=torch.Generator().manual_seed(0)).to(device)
        y = (torch.arange(16, device=device) % num_classes) if num_classes else None
        z1 = solvers.integrate(ema, z0, method="euler", steps=50, cond={"labels": y} if num_classes else None).x
        return ae.decode(z1)

    try:
        result = training.train_cfm(model, paths.LinearPath(0.0), noise, latents.to(device),
                                    labels=labels.to(device) if num_classes else None,
                                    label_dropout=args.label_dropout if num_classes else 0.0, steps=args.steps,
                                    batch_size=args.batch, lr=args.lr, warmup=args.warmup, ema_decay=args.ema,
                                    grad_clip=1.0, precision=args.precision, seed=args.seed, device=device,
                                    out_dir=args.out, checkpoint_every=args.checkpoint_every, sample_fn=sample_fn,
                                    sample_every=args.sample_every, override=args.override)
    except ValueError as err:
        if "override=True" not in str(err):
            raise
        p.error(f"{err} (on the command line: --override)")
    if rank == 0:
        recent = result.losses[-50:]
        summary = {"steps": len(result.losses), "final_loss": sum(recent) / max(1, len(recent)),
                   "world_size": world, "autoencoder": ae.name, "data": data.source, "model": args.model,
                   "latent_shape": [c, h, h], "command": "scripts/train_latent.py " + " ".join(sys.argv[1:])}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(json.dumps(summary, indent=1))
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
