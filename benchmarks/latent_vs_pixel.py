#!/usr/bin/env python3
"""Training-step time and memory of flow matching in pixel space vs in a latent space.

    python benchmarks/latent_vs_pixel.py            # 32 and 64 px, CPU (and GPU when present)
    python benchmarks/latent_vs_pixel.py --quick --out /tmp/x   # a small run (tests/test_benchmarks.py)

Same network family on both sides: lfm_core.nets.UNetVelocity (diffusers UNet2DModel, preset --preset),
one CFM training step (forward, backward, AdamW) at batch --batch, measured by lfm_core.devices.measure_step
(the function notebook 04 calls):

* pixel: RGB images, 3 x S x S;
* latent: the latents of an autoencoder with downsampling factor 8 and 4 channels (the shape of
  stabilityai/sd-vae-ft-mse's latents, 4 x S/8 x S/8). With a latent cache the encoder runs once per
  image before training, so it is not part of the step (the one-off encoding cost is reported by
  notebook 04).

Time: median over --repeats steps after warm-up. Memory: the tensors autograd keeps for the backward pass
(what grows with the batch, on any device), and on CUDA the peak allocation. The latent step should be at
least 10x cheaper at 64 px.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: flags, command line, report files)

FACTOR, LATENT_CHANNELS = 8, 4


def measure(kind: str, size: int, preset: str, batch: int, repeats: int, device: str) -> dict:
    """Time and memory of one configuration's training step."""
    from lfm_core import devices, nets, paths, training

    torch.manual_seed(0)
    c, s = (3, size) if kind == "pixel" else (LATENT_CHANNELS, size // FACTOR)
    model = nets.UNetVelocity(c, s, preset=preset)
    path = paths.LinearPath()
    x1 = torch.randn(batch, c, s, s)

    def batch_fn(i):
        g = torch.Generator().manual_seed(i)
        return {"x0": torch.randn(x1.shape, generator=g), "x1": x1, "t": torch.rand(batch, generator=g)}

    def loss_fn(m, x0, x1, t):
        return training.cfm_loss(m, path, x0, x1, t=t)

    r = devices.measure_step(model, batch_fn, loss_fn, repeats=repeats, warmup=2, device=device)
    return {"kind": kind, "size": size, "shape": [c, s, s], "device": device, "ms_per_step": r["ms"],
            "activations_mb": r["activations_mb"], "cuda_peak_mb": r["peak_mb"],
            "params": sum(p.numel() for p in model.parameters())}


def main(argv=None) -> int:
    p = common.parser(__doc__, report_only=False)
    p.add_argument("--sizes", type=common.number(int, minimum=8), nargs="+", default=[32, 64])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=common.number(int, minimum=1), default=16)
    p.add_argument("--repeats", type=common.number(int, minimum=1), default=7)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.repeats = [32], 4, 1
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for size in args.sizes:
            for kind in ("pixel", "latent"):
                r = measure(kind, size, args.preset, args.batch, args.repeats, device)
                rows.append(r)
                common.log(f"{device:5s} {size:4d} px {kind:6s} {str(tuple(r['shape'])):14s} "
                           f"{r['ms_per_step']:9.1f} ms/step, activations {r['activations_mb']:8.1f} MB")
    header = common.produced_by(common.command(__file__, argv), details=[
        f"torch {torch.__version__}", common.machine()["arch"], f"{torch.get_num_threads()} CPU threads"])
    lines = ["# Pixel vs latent: one flow matching training step", "", header, "",
             f"UNetVelocity preset `{args.preset}`, batch {args.batch}; latent = 4 channels at 1/8 of the image side "
             "(the shape of sd-vae-ft-mse's latents). Time: median of "
             f"{args.repeats} steps after 2 warm-up steps (lfm_core.devices.measure_step). Memory: the tensors "
             "autograd keeps for the backward pass.", "",
             "| device | image size | pixel shape | latent shape | pixel ms/step | latent ms/step | speed-up | "
             "pixel activations MB | latent activations MB |", "|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for device in devices:
        for size in args.sizes:
            px = next(r for r in rows if r["device"] == device and r["size"] == size and r["kind"] == "pixel")
            lt = next(r for r in rows if r["device"] == device and r["size"] == size and r["kind"] == "latent")
            speed = px["ms_per_step"] / lt["ms_per_step"]
            summary.append({"device": device, "size": size, "speedup": speed})
            lines.append(f"| {device} | {size} | {tuple(px['shape'])} | {tuple(lt['shape'])} | "
                         f"{px['ms_per_step']:.1f} | {lt['ms_per_step']:.1f} | {speed:.1f}x | "
                         f"{px['activations_mb']:.1f} | {lt['activations_mb']:.1f} |")
    lines += ["", "Expected: the latent step at least 10x cheaper at 64 px."]
    md = common.save(args.out, "latent_vs_pixel" + ("_quick" if args.quick else ""), lines,
                     {"rows": rows, "summary": summary, "batch": args.batch, "preset": args.preset})
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
