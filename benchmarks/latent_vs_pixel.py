#!/usr/bin/env python3
"""Training-step time and peak memory of flow matching in pixel space vs in a latent space.

    python benchmarks/latent_vs_pixel.py            # 32 and 64 px, CPU (and GPU when present)
    python benchmarks/latent_vs_pixel.py --quick --out /tmp/x   # a small run (tests/test_benchmarks.py)

Same network family on both sides: lfm_core.nets.UNetVelocity (diffusers UNet2DModel, preset --preset),
one CFM training step (forward, backward, AdamW) at batch --batch:

* pixel: RGB images, 3 x S x S;
* latent: the latents of an autoencoder with downsampling factor 8 and 4 channels (the shape of
  stabilityai/sd-vae-ft-mse's latents, 4 x S/8 x S/8). With a latent cache the encoder runs once per
  image before training, so it is not part of the step (the one-off encoding cost is reported by
  notebook 04).

Time: median over --repeats runs of --steps steps after warm-up. Memory: on the CPU, the growth of the
process's peak resident set from just before the first training step (the model and its inputs already
allocated), each configuration in a fresh subprocess; on CUDA, torch.cuda.max_memory_allocated.
Target of the issue: latent at least 10x cheaper per step at 64 px.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FACTOR, LATENT_CHANNELS = 8, 4


def measure(kind: str, size: int, preset: str, batch: int, steps: int, repeats: int, device: str) -> dict:
    """Time one configuration in this process (called in a fresh subprocess for the CPU)."""
    from lfm_core import nets, paths

    torch.manual_seed(0)
    c, s = (3, size) if kind == "pixel" else (LATENT_CHANNELS, size // FACTOR)
    model = nets.UNetVelocity(c, s, preset=preset).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    path = paths.LinearPath()
    x1 = torch.randn(batch, c, s, s, device=device)

    def step():
        x0, t = torch.randn_like(x1), torch.rand(batch, device=device)
        xt, ut = path.sample(x0, x1, t)
        loss = (model(xt, t) - ut).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; before the first step
    for _ in range(2):
        step()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append((time.perf_counter() - t0) / steps * 1e3)
    if device.startswith("cuda"):
        mem_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        mem_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"kind": kind, "size": size, "shape": [c, s, s], "device": device, "ms_per_step": statistics.median(times),
            "peak_mem_mb": mem_mb, "params": sum(p.numel() for p in model.parameters())}


def run_isolated(args_list) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", *args_list], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--one", nargs=5, metavar=("KIND", "SIZE", "PRESET", "BATCH", "STEPS_REPEATS_DEVICE"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        kind, size, preset, batch, rest = args.one
        steps, repeats, device = rest.split(",")
        print(json.dumps(measure(kind, int(size), preset, int(batch), int(steps), int(repeats), device)))
        return 0
    if args.quick:
        args.sizes, args.batch, args.steps, args.repeats = [32], 4, 1, 1
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for size in args.sizes:
            for kind in ("pixel", "latent"):
                spec = [kind, str(size), args.preset, str(args.batch), f"{args.steps},{args.repeats},{device}"]
                r = run_isolated(spec) if device == "cpu" else measure(kind, size, args.preset, args.batch,
                                                                        args.steps, args.repeats, device)
                rows.append(r)
                print(f"{device:5s} {size:4d} px {kind:6s} {str(tuple(r['shape'])):14s} "
                      f"{r['ms_per_step']:9.1f} ms/step "
                      f"{r['peak_mem_mb']:8.1f} MB", flush=True)
    lines = ["# Pixel vs latent: one flow matching training step", "",
             f"Produced by `python benchmarks/latent_vs_pixel.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
             f"(torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} CPU threads).", "",
             f"UNetVelocity preset `{args.preset}`, batch {args.batch}; latent = 4 channels at 1/8 of the image side "
             "(the shape of sd-vae-ft-mse's latents). Time: median of "
             f"{args.repeats} x {args.steps} steps. Memory: growth of peak RSS during the steps (CPU, fresh "
             "process per row) or max allocated (CUDA).", "",
             "| device | image size | pixel shape | latent shape | pixel ms/step | latent ms/step | speed-up | "
             "pixel MB | latent MB |", "|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for device in devices:
        for size in args.sizes:
            px = next(r for r in rows if r["device"] == device and r["size"] == size and r["kind"] == "pixel")
            lt = next(r for r in rows if r["device"] == device and r["size"] == size and r["kind"] == "latent")
            speed = px["ms_per_step"] / lt["ms_per_step"]
            summary.append({"device": device, "size": size, "speedup": speed})
            lines.append(f"| {device} | {size} | {tuple(px['shape'])} | {tuple(lt['shape'])} | "
                         f"{px['ms_per_step']:.1f} | {lt['ms_per_step']:.1f} | {speed:.1f}x | "
                         f"{px['peak_mem_mb']:.0f} | {lt['peak_mem_mb']:.0f} |")
    lines += ["", "Target (issue): latent at least 10x cheaper per step at 64 px."]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "latent_vs_pixel_quick" if args.quick else "latent_vs_pixel"
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps({"rows": rows, "summary": summary, "batch": args.batch,
                                                       "preset": args.preset}, indent=1) + "\n")
    print(f"wrote {args.out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
