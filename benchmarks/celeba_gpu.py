#!/usr/bin/env python3
"""The cost of latent flow matching on CelebA-HQ 256 on one GPU: training steps, the autoencoder, sampling.

    python benchmarks/celeba_gpu.py                      # on a CUDA GPU: the sizes of notebooks 04 and 05
    python benchmarks/celeba_gpu.py --quick --out /tmp/x # a small run on any device (tests/test_benchmarks.py)

What it measures, on the first CUDA device (the CPU when there is none, which is only meaningful with --quick):

* one training step (forward, backward, AdamW; ``devices.measure_step``) of ``unet-small`` and ``DiT-B/2`` on
  4 x 32 x 32 latents at batch 64, in fp32 and in bf16 (fp16 with a gradient scaler where the GPU has no bf16),
  and of ``unet-small`` on 3 x 256 x 256 pixels at the same batch: median time and CUDA peak memory;
* ``sd-vae-ft-mse``'s encoder and decoder at 256 px: images per second at batch 32 (the architecture's cost,
  which does not depend on the weights: the stand-in of ``scripts/make_standin_autoencoder.py`` is used unless
  ``--autoencoder`` names a local folder of the real one);
* sampling 64 latents with dopri5 (atol = rtol = 1e-5) through the decoder: NFE and wall time. The velocity
  network is untrained (random weights), so the NFE is that of a random field, not of a trained flow: read it as
  the cost per evaluation times the NFE notebook 04 reports for its trained model.

Writes ``celeba_gpu.md`` and ``celeba_gpu.json`` (``celeba_gpu_quick.*`` with --quick) to --out.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: flags, command line, report files)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_cost(net: str, shape, batch: int, precision: str, device, repeats: int) -> dict:
    from lfm_core import devices, nets, paths, training

    torch.manual_seed(0)
    kind, preset = net.split(":")
    model = (nets.UNetVelocity if kind == "unet" else nets.DiTVelocity)(shape[0], shape[1], preset=preset)
    path = paths.LinearPath()

    def batch_fn(i):
        g = torch.Generator().manual_seed(i)
        size = (batch, shape[0], shape[1], shape[1])
        return {"x0": torch.randn(size, generator=g), "x1": torch.randn(size, generator=g),
                "t": torch.rand(batch, generator=g)}

    row = {"network": net, "shape": list((shape[0], shape[1], shape[1])), "batch": batch, "precision": precision,
           "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    try:
        r = devices.measure_step(model, batch_fn, lambda m, **b: training.cfm_loss(m, path, **b), repeats=repeats,
                                 warmup=2, device=device, precision=precision)
        row.update(ms_per_step=round(r["ms"], 2), peak_mib=None if r["peak_mb"] is None else round(r["peak_mb"]),
                   activations_mib=round(r["activations_mb"], 1))
    except torch.cuda.OutOfMemoryError:
        row.update(ms_per_step=None, peak_mib=None, activations_mib=None, note="out of memory")
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def autoencoder_cost(ae, size: int, batch: int, repeats: int, device) -> dict:
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    out = {}
    with torch.no_grad():
        z = ae.encode(x, batch_size=batch)
        for name, fn in (("encode", lambda: ae.encode(x, batch_size=batch)),
                         ("decode", lambda: ae.decode(z, batch_size=batch))):
            fn()
            sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            sync(device)
            out[f"{name}_images_per_s"] = round(repeats * batch / (time.perf_counter() - start), 1)
    return out


def sampling_cost(ae, n: int, latent: int, preset: str, device) -> dict:
    from lfm_core import nets, solvers

    torch.manual_seed(0)
    model = nets.UNetVelocity(4, latent, preset=preset).to(device).eval()
    z0 = torch.randn(n, 4, latent, latent, generator=torch.Generator().manual_seed(1)).to(device)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        res = solvers.integrate(model, z0, method="dopri5", atol=1e-5, rtol=1e-5)
        sync(device)
        t_flow = time.perf_counter() - start
        ae.decode(res.x, batch_size=32)
    sync(device)
    return {"samples": n, "nfe": int(res.nfe), "flow_s": round(t_flow, 2),
            "with_decoding_s": round(time.perf_counter() - start, 2)}


def report(data: dict) -> list[str]:
    """The report's lines from the saved measurements (``data``, as written to the JSON)."""
    rows, ae_row, sample_row = data["steps"], data["autoencoder"], data["sampling"]
    net = data["sampling_network"]
    lines = ["# Latent flow matching on CelebA-HQ 256: the cost on one GPU", "", data["produced_by"], "",
             "## One training step (forward, backward, AdamW; median of "
             f"{data['repeats']} after 2 warm-up steps)", "",
             "| network | input | batch | precision | M params | ms / step | CUDA peak MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = "out of memory" if r["ms_per_step"] is None else f"{r['ms_per_step']:.1f}"
        lines.append(f"| {r['network']} | {'x'.join(map(str, r['shape']))} | {r['batch']} | {r['precision']} | "
                     f"{r['params_m']} | {ms} | {r['peak_mib'] if r['peak_mib'] is not None else '-'} |")
    n = sample_row["samples"]
    lines += ["", f"## The autoencoder ({ae_row['autoencoder']}), {ae_row['size']} px, batch {ae_row['batch']}", "",
              f"encode {ae_row['encode_images_per_s']} images/s, decode {ae_row['decode_images_per_s']} images/s", "",
              f"## Sampling {n} latents with dopri5 (atol = rtol = 1e-5), untrained {net}", "",
              f"NFE {sample_row['nfe']}, {sample_row['flow_s']} s for the flow, {sample_row['with_decoding_s']} s "
              "with decoding. A random field's NFE, not a trained flow's: the cost of one evaluation is "
              f"{sample_row['flow_s'] / max(sample_row['nfe'], 1) * 1000:.1f} ms for {n} latents."]
    return lines


def main(argv=None) -> int:
    from lfm_core import autoencoders, devices

    p = common.parser(__doc__, quick="tiny sizes, any device", report_only=False)
    p.add_argument("--autoencoder", type=Path, default=None,
                   help="a local diffusers folder of sd-vae-ft-mse (default: its architecture with random weights)")
    p.add_argument("--repeats", type=common.number(int, minimum=1), default=10)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        nets_, size, batch, latent, ae_size, ae_batch, n_samples, repeats = (
            ["unet:tiny", "dit:tiny"], 64, 2, 8, 64, 2, 4, 1)
    else:
        if device.type != "cuda":
            sys.exit("celeba_gpu.py measures a GPU; this machine has none (use --quick for a small CPU run)")
        nets_, size, batch, latent, ae_size, ae_batch, n_samples, repeats = (
            ["unet:small", "dit:DiT-B/2"], 256, 64, 32, 256, 32, 64, args.repeats)
    low = devices.resolve_precision("auto", device)   # bf16 where the GPU has it, else fp16; fp32 on a CPU
    precisions = ["fp32"] + ([low] if low != "fp32" else [])
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    common.log(f"device: {gpu}; precisions {precisions}")

    rows = []
    for net in nets_:
        for prec in precisions:
            rows.append(step_cost(net, (4, latent), batch, prec, device, repeats))
            common.log(str(rows[-1]))
    for prec in precisions:
        rows.append(step_cost(nets_[0], (3, size), batch, prec, device, repeats))
        common.log(str(rows[-1]))

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.autoencoder
        if folder is None:
            folder = Path(tmp) / "standin"
            autoencoders.write_standin(folder, seed=0)
        ae = autoencoders.load(str(folder), device=device)
        ae_row = {"autoencoder": ae.name, "size": ae_size, "batch": ae_batch,
                  **autoencoder_cost(ae, ae_size, ae_batch, max(1, repeats // 2), device)}
        common.log(str(ae_row))
        sample_row = sampling_cost(ae, n_samples, latent, nets_[0].split(":")[1], device)
        common.log(str(sample_row))

    command = common.command(__file__, argv)
    data = {"command": command, "device": gpu, "steps": rows, "autoencoder": ae_row, "sampling": sample_row,
            "produced_by": common.produced_by(command, gpu, [f"torch {torch.__version__}", common.machine()["arch"]]),
            "repeats": repeats, "sampling_network": nets_[0]}
    md = common.save(args.out, "celeba_gpu" + ("_quick" if args.quick else ""), report(data), data)
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
