#!/usr/bin/env python3
"""Generated Fashion-MNIST garments ranked by the Frechet distance in a small classifier's features.

    python benchmarks/fashion_frechet.py                       # the report in benchmarks/results/
    python benchmarks/fashion_frechet.py --quick --out /tmp/x  # a small run (tests/test_benchmarks.py)

Latent flow matching as notebook 04 does it, on Fashion-MNIST (Debian's dataset-fashion-mnist package): the
project's autoencoder ``offline-fashion`` (the 28 x 28 images padded to 32 x 32, 4 x 8 x 8 latents), a U-Net
(lfm_core.nets.UNetVelocity, preset tiny) trained with conditional flow matching (lfm_core.training.train_cfm, EMA)
on the latents of --n-train training images, then --n samples by Euler with --many steps and with one step.

Each set of --n images (decoded, cropped back to 28 x 28) is compared with --n-ref test images by the Frechet
distance in the 128 penultimate features of the shipped classifier (lfm_core.classifier, FD), beside two floors:
--n other test images (held out: the value of a perfect generator at this sample size) and the autoencoder's
reconstructions of them (the best a latent model can reach). Also: the nearest-neighbour ratio (median pixel
distance of each image to its nearest training image, over the same for held-out images: near 0 means copies)
and how evenly the classifier spreads each set over the 10 classes (the largest class share; 0.1 is even).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: flags, command line, report files)


@dataclass
class Config:
    n_train: int = 60_000   # training images encoded and trained on
    steps: int = 4000       # CFM training steps
    batch: int = 128
    lr: float = 2e-3
    ema: float = 0.999
    n: int = 2000           # images per compared set
    n_ref: int = 5000       # test images of the reference set (disjoint from the held-out set)
    many: int = 50          # Euler steps of the many-step samples
    n_memory: int = 20_000  # training images searched for each image's nearest neighbour
    seed: int = 0


QUICK = Config(n_train=512, steps=10, batch=32, n=48, n_ref=64, many=4, n_memory=512)


def measure(cfg: Config, log=common.log) -> dict:
    from lfm_core import autoencoders, classifier, images, metrics, nets, paths, runtime, solvers, training

    start = time.perf_counter()
    runtime.seed_everything(cfg.seed)
    ae = autoencoders.load("offline-fashion")
    clf, clf_record = classifier.load("fashion_mnist")
    pad, odd = divmod(ae.meta["image_size"][-1] - 28, 2)   # the autoencoder's 32 px: the 28 px images padded
    if pad < 0 or odd:
        raise SystemExit(f"the autoencoder's images ({ae.meta['image_size']}) are not the data's, padded evenly")
    train, test = images.fashion_mnist_split(images.load("fashion_mnist", pad=pad))
    if cfg.n + cfg.n_ref > len(test) or cfg.n_train > len(train):
        raise SystemExit(f"Fashion-MNIST has {len(train)} training and {len(test)} test images: --n-train must fit in "
                         "the first, --n + --n-ref in the second")

    def cropped(x):   # the data's 28 px, which the classifier takes
        return images.crop(x, pad)

    train_p, held_p = train.images[:cfg.n_train], test.images[cfg.n_ref:cfg.n_ref + cfg.n]   # the autoencoder's size
    train_x, ref, held = cropped(train_p), cropped(test.images[:cfg.n_ref]), cropped(held_p)

    log(f"encoding {len(train_x)} training images ...")
    latents = ae.encode(train_p, batch_size=500)
    c, h = latents.shape[1], latents.shape[-1]
    torch.manual_seed(cfg.seed)
    model = nets.UNetVelocity(c, h, preset="tiny")
    path = paths.LinearPath(0.0)
    log(f"training a U-Net (tiny) for {cfg.steps} steps on latents {tuple(latents.shape[1:])} ...")
    result = training.train_cfm(model, path, lambda n, g: torch.randn(n, c, h, h, generator=g), latents,
                                steps=cfg.steps, batch_size=cfg.batch, lr=cfg.lr, warmup=min(200, cfg.steps // 2),
                                ema_decay=cfg.ema, grad_clip=1.0, seed=cfg.seed, progress=False)
    ema = result.ema.eval()
    z0 = torch.randn(cfg.n, c, h, h, generator=torch.Generator().manual_seed(cfg.seed + 1))
    sets = {"held-out test images": held,
            "autoencoder reconstructions": cropped(ae.decode(ae.encode(held_p, batch_size=500),
                                                             batch_size=500))}
    with torch.no_grad():
        for name, steps in ((f"Euler, {cfg.many} steps", cfg.many), ("Euler, 1 step", 1)):
            log(f"sampling: {name} ...")
            z = solvers.integrate(ema, z0, method="euler", steps=steps).x
            sets[name] = cropped(ae.decode(z, batch_size=500))
    ref_features = classifier.features(clf, ref)
    memory = train_x[:cfg.n_memory].reshape(min(cfg.n_memory, len(train_x)), -1)
    nn_held = float(metrics.nearest_neighbour_distance(held.reshape(len(held), -1), memory).median())
    rows = []
    for name, x in sets.items():
        feats = classifier.features(clf, x)
        with torch.no_grad():
            share = torch.bincount(clf.head(feats).argmax(1), minlength=clf.config["num_classes"]).float() / len(x)
        nn = float(metrics.nearest_neighbour_distance(x.reshape(len(x), -1), memory).median())
        rows.append({"set": name, "fd": classifier.frechet_distance(feats, ref_features), "nn_ratio": nn / nn_held,
                     "largest_class_share": float(share.max())})
        log(f"  {name}: FD {rows[-1]['fd']:.3f}, nearest-neighbour ratio {rows[-1]['nn_ratio']:.2f}")
    final = result.losses[-max(1, cfg.steps // 10):]
    return {"config": asdict(cfg), "rows": rows, "final_loss": sum(final) / len(final),
            "classifier_test_accuracy": clf_record.get("test_accuracy"),
            "autoencoder_heldout_psnr_db": ae.meta.get("psnr_heldout_db"),
            "train_seconds": result.seconds, "wall_seconds": time.perf_counter() - start, "torch": torch.__version__}


def report(data: dict) -> list[str]:
    cfg = data["config"]
    lines = ["# Fashion-MNIST samples ranked by the Frechet distance in a classifier's features", "",
             data["produced_by"], "",
             f"A U-Net (tiny) trained for {cfg['steps']} CFM steps (batch {cfg['batch']}) on the latents of "
             f"{cfg['n_train']} training images (autoencoder `offline-fashion`, held-out PSNR "
             f"{data['autoencoder_heldout_psnr_db']} dB; final loss {data['final_loss']:.3f}). Each set holds "
             f"{cfg['n']} images and is compared with {cfg['n_ref']} other test images in the 128 features of the "
             f"shipped classifier (test accuracy {data['classifier_test_accuracy']}). The nearest-neighbour ratio "
             f"searches {cfg['n_memory']} training images. One run, seed {cfg['seed']}.", "",
             "| set | FD to test images | nearest-neighbour ratio | largest class share |", "|---|---:|---:|---:|"]
    for r in data["rows"]:
        lines.append(f"| {r['set']} | {r['fd']:.3f} | {r['nn_ratio']:.2f} | {r['largest_class_share']:.2f} |")
    fd = {r["set"]: r["fd"] for r in data["rows"]}
    names = list(fd)
    ranked = all(fd[a] < fd[b] for a, b in zip(names, names[1:], strict=False))
    lines += ["", f"Ranking held-out < reconstructions < {names[2]} < one step: "
              + ("holds." if ranked else "does not hold in this run.")]
    return lines


def main(argv=None) -> int:
    p = common.parser(__doc__)
    for name, kind in (("n_train", int), ("steps", int), ("batch", int), ("n", int), ("n_ref", int), ("many", int),
                       ("n_memory", int), ("seed", int)):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=common.number(kind, minimum=0 if name == "seed"
                                                                                     else 2 if name in ("n", "n_ref")
                                                                                     else 1))
    args = p.parse_args(argv)
    if args.report_only is not None:
        data = common.load(args.report_only, p, keys=("command", "rows", "config"))
        print(common.save(args.report_only.parent, args.report_only.stem, report(data)))
        return 0
    cfg = Config(**asdict(QUICK)) if args.quick else Config()
    common.override(cfg, args, ("n_train", "steps", "batch", "n", "n_ref", "many", "n_memory", "seed"))
    data = measure(cfg)
    data["command"] = common.command(__file__, argv)
    data["produced_by"] = common.produced_by(data["command"], details=[
        f"torch {data['torch']}", f"{os.cpu_count()} CPU cores", common.machine()["arch"]],
        minutes=data["wall_seconds"] / 60)
    print(common.save(args.out, "fashion_frechet_quick" if args.quick else "fashion_frechet", report(data), data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
