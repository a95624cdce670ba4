#!/usr/bin/env python3
"""Train the small Fashion-MNIST classifier whose features rank generated garments (lfm_core.classifier).

    python scripts/train_classifier.py                  # the shipped one (lfm_core/assets/classifier_fashion_mnist)
    python scripts/train_classifier.py --steps 200 --out /tmp/clf    # a quick one elsewhere

Trains lfm_core.classifier.SmallClassifier on Fashion-MNIST's 60 000 training images (Debian's
dataset-fashion-mnist package, or --root, the folder of the IDX files) and scores it on the 10 000 test images,
which it never sees. Writes --out with lfm_core.store.save (float16 weights, checksummed), its record holding the
command, the steps, the seconds and the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lfm_core import classifier, images, runtime, store


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=classifier.SHIPPED["fashion_mnist"])
    p.add_argument("--root", type=Path, help="the folder of Fashion-MNIST's IDX files (default: Debian's)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("steps", "batch", "width", "dim"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    data = images.load("fashion_mnist", root=args.root)
    try:
        train, test = images.fashion_mnist_split(data)
    except ValueError as exc:
        p.error(str(exc))
    train_x, train_y, test_x, test_y = train.images, train.labels, test.images, test.labels
    runtime.seed_everything(args.seed)
    model = classifier.SmallClassifier(1, 10, width=args.width, dim=args.dim)
    fit = classifier.train_classifier(model, train_x, train_y, steps=args.steps, batch_size=args.batch, lr=args.lr,
                                      seed=args.seed)
    record = {
        "data": "Fashion-MNIST, 60 000 training images (28 x 28, 10 classes); scored on the 10 000 test images",
        "command": " ".join(["python scripts/train_classifier.py", *(sys.argv[1:] if argv is None else argv)]),
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
        "final_loss": round(sum(fit["losses"][-100:]) / len(fit["losses"][-100:]), 4),
        "train_accuracy": round(classifier.accuracy(model, train_x[:10_000], train_y[:10_000]), 4),
        "test_accuracy": round(classifier.accuracy(model, test_x, test_y), 4),
        "train_seconds": round(fit["seconds"], 1),
        "torch": torch.__version__,
    }
    store.save(args.out, model, record, half=True)
    print(json.dumps(record, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
