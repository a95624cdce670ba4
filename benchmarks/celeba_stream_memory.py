#!/usr/bin/env python3
"""Peak memory of streaming a CelebA-HQ-sized folder into the latent cache: it must not grow with the images.

    python benchmarks/celeba_stream_memory.py                 # 1 000 and 30 000 generated images -> results/
    python benchmarks/celeba_stream_memory.py --quick --out /tmp/x   # 200 and 1 000 (tests/test_benchmarks.py)

A folder in the StarGAN v2 layout (``train/{female,male}/*.jpg``) is generated with N smooth random RGB images
(256 x 256 JPEG: CelebA-HQ's 1024 px JPEGs would take hours to write here, and the loader decodes them at 1/4 scale
anyway), then ``lfm_core.images.stream("celeba_hq", size=64)`` is fed to ``lfm_core.latent_cache.cached_latents``
with a small RGB AutoencoderKL (x4, 4 x 16 x 16 latents) at batch 64, each N in a fresh process. Reported: the
peak resident memory of that process before and after streaming, and the size of the latents it must hold. The
bound stated in ``cached_latents``: the latents of all images, plus one chunk of decoded images and the
encoder's activations for it, whatever N.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: flags, command line, report files)


def generate(folder: Path, n: int, side: int = 256) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", 2)):
        for cls in ("female", "male"):
            (folder / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count // 2 if split == "train" else 1):
                small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(small).resize((side, side), Image.BILINEAR).save(
                    folder / split / cls / f"{i:06d}.jpg", quality=90)


def measure(folder: Path, cache: Path) -> dict:
    """In this process: stream the folder into the cache; peak RSS (MiB) before and after."""
    import torch
    from diffusers import AutoencoderKL

    from lfm_core import autoencoders, images, latent_cache

    torch.manual_seed(0)
    ae = autoencoders.LatentAutoencoder(AutoencoderKL(**autoencoders.offline_config(3, channels=(16, 16, 16))), 1.0,
                                        "memory-benchmark")
    src = images.stream("celeba_hq", size=64, root=folder)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    latents, _ = latent_cache.cached_latents(ae, src, cache, batch_size=64)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": len(src), "seconds": seconds, "rss_before_mib": before, "rss_peak_mib": after,
            "latents_mib": latents.numel() * 4 / 2**20, "growth_mib": after - before}


def main(argv=None) -> int:
    p = common.parser(__doc__, report_only=False)
    p.add_argument("--sizes", type=common.number(int, minimum=2), nargs="+")
    p.add_argument("--work", type=Path, default=Path("/tmp/lfm-stream-memory"))
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(Path(args.one[0]), Path(args.one[1]))))
        return 0
    sizes = args.sizes or ([200, 1000] if args.quick else [1000, 30_000])
    rows = []
    for n in sizes:
        folder = args.work / f"celeba-{n}"
        if not (folder / "train").is_dir():
            start = time.perf_counter()
            generate(folder, n)
            common.log(f"generated {n} images in {time.perf_counter() - start:.0f} s")
        cache = args.work / f"cache-{n}"
        out = subprocess.run([sys.executable, __file__, "--one", str(folder), str(cache)], capture_output=True,
                             text=True, check=True, cwd=common.ROOT)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        common.log(f"{row['images']:6d} images: {row['seconds']:6.1f} s, peak RSS {row['rss_peak_mib']:7.0f} MiB "
                   f"(before streaming {row['rss_before_mib']:.0f} MiB; latents {row['latents_mib']:.0f} MiB)")
    command, machine = common.command(__file__, argv), common.machine()
    lines = ["# Streaming CelebA-HQ into the latent cache: peak memory", "",
             common.produced_by(command, details=[machine["arch"], f"Python {machine['python']}"]), "",
             "Generated 256 x 256 JPEGs in the StarGAN v2 layout, streamed at 64 px through a small RGB AutoencoderKL "
             "(4 x 16 x 16 latents) at batch 64 by `latent_cache.cached_latents`, each count in a fresh process.", "",
             "| images | seconds | peak RSS MiB | RSS before streaming MiB | growth MiB | latents held MiB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['images']} | {r['seconds']:.1f} | {r['rss_peak_mib']:.0f} | {r['rss_before_mib']:.0f} | "
                     f"{r['growth_mib']:.0f} | {r['latents_mib']:.0f} |")
    lines += ["", "The growth is the latents of all images (which the cache returns) plus a constant: one chunk of "
              "decoded images and the encoder's activations for it. At 256 px through sd-vae-ft-mse the latents of "
              "the 30 000 CelebA-HQ images take 4 x 32 x 32 x 4 bytes each, 480 MiB."]
    md = common.save(args.out, "celeba_stream_memory" + ("_quick" if args.quick else ""), lines,
                     {"command": command, "rows": rows})
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
