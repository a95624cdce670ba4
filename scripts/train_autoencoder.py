#!/usr/bin/env python3
"""Train the project's small offline autoencoder and write it where lfm_core.autoencoders.load("offline") finds it.

    python scripts/train_autoencoder.py                      # the committed checkpoint (faces, 32 x 32)
    python scripts/train_autoencoder.py --data digits --steps 2000 --batch 64   # the committed digits one (16 x 16)
    python scripts/train_autoencoder.py --data fashion_mnist --steps 2000 --batch 32   # the Fashion-MNIST one (32 x 32)
    python scripts/train_autoencoder.py --steps 300 --out /tmp/ae   # a quick one elsewhere

A diffusers AutoencoderKL (lfm_core.autoencoders.offline_config: blocks of 16, 32, 32 channels, x4 downsampling, 4
latent channels, 0.24M parameters) trained on the training split of the 100 LFW faces of scikit-image (25 x 25
grayscale, resized to 32 x 32; 80 train / 20 held out, seed 0), with L1 + MSE + a small KL term and horizontal
flips; or, with --data digits, on scikit-learn's digits at 16 x 16 (1500 train / 297 held out, seed 0, no flips: a
flipped digit is another symbol) -> 4 x 4 x 4 latents; or, with --data fashion_mnist, on Fashion-MNIST's 60 000
training images, padded with their black background from 28 x 28 to 32 x 32 (its 10 000 test images held out,
flips) -> 4 x 8 x 8 latents. The latent scale is set so that the scaled training latents have unit standard
deviation. Writes --out with lfm_core.store.save: the autoencoder's diffusers config and weights, checksummed, and
a record of the scale, the data, the command and the held-out PSNR. """

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from lfm_core import autoencoders, images, metrics, runtime, store

DATA = {
    "lfw_faces": dict(name="offline", size=32, heldout=20, flip=True,
                      source="lfw_faces (skimage.data.lfw_subset, 100 faces)"),
    "digits": dict(name="offline-digits", size=16, heldout=297, flip=False,
                   source="digits (sklearn.datasets.load_digits, 1797 images)"),
    # its own split: the 10 000 test images are held out (Debian's dataset-fashion-mnist package)
    # padded with its black background from 28 x 28 to 32 x 32 (-> 4 x 8 x 8 latents, which a U-Net halves)
    "fashion_mnist": dict(name="offline-fashion", size=28, pad=2, heldout=10_000, flip=True, split="test last",
                          source="Fashion-MNIST (70 000 images: 60 000 train, 10 000 test)"),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=sorted(DATA), default="lfw_faces")
    p.add_argument("--out", type=Path, help="default: where autoencoders.load finds the offline one for --data")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--size", type=int, help="image size (default: 32 for faces, 16 for digits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 32],
                   help="block widths; len - 1 halvings (multiples of 16)")
    args = p.parse_args(argv)
    spec = DATA[args.data]
    size = args.size or spec["size"]
    out = args.out or autoencoders.OFFLINE[spec["name"]]
    runtime.seed_everything(args.seed)
    data = images.load(args.data, size=size, pad=spec.get("pad", 0))
    size += 2 * spec.get("pad", 0)
    if spec.get("split") == "test last":
        train, heldout = images.fashion_mnist_split(data)
    else:
        train, heldout = data.split(spec["heldout"], generator=torch.Generator().manual_seed(0))
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    model = AutoencoderKL(**autoencoders.offline_config(in_channels=1, channels=tuple(args.channels)))
    start = time.perf_counter()
    hist = autoencoders.fit_autoencoder(model, train.images, steps=args.steps, batch_size=args.batch, lr=args.lr,
                                        seed=args.seed, flip=spec["flip"])
    model.eval()
    some = train.images[:10_000]   # enough for the scale and the training PSNR
    with torch.no_grad():
        std = float(torch.cat([model.encode(some[i:i + 500]).latent_dist.mean for i in range(0, len(some), 500)]).std())
    ae = autoencoders.LatentAutoencoder(model, 1.0 / std, spec["name"])
    rec_train = ae.decode(ae.encode(some, batch_size=500), batch_size=500)
    rec_held = ae.decode(ae.encode(heldout.images, batch_size=500), batch_size=500)
    meta = {
        "name": spec["name"],
        "scale": 1.0 / std,
        "data": f"{spec['source']}, {size}x{size} grayscale, {len(train)} train / {len(heldout)} held out"
                + (" (seed 0)" if "split" not in spec else " (the test split)"),
        "image_size": [1, size, size],
        "latent_shape": [4, size // ae.factor, size // ae.factor],
        "channels": list(args.channels),
        "psnr_train_db": round(metrics.psnr(some, rec_train), 2),
        "psnr_heldout_db": round(metrics.psnr(heldout.images, rec_held), 2),
        "final_loss": round(sum(hist.losses[-100:]) / 100, 5),
        "train_seconds": round(time.perf_counter() - start, 1),
        "command": "python scripts/train_autoencoder.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "torch": torch.__version__,
    }
    store.save(out, model, meta)
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
