#!/usr/bin/env python3
"""Write an AutoencoderKL with stabilityai/sd-vae-ft-mse's exact configuration and random weights.

    python scripts/make_standin_autoencoder.py                       # -> data/cache/standin-sd-vae-ft-mse
    python scripts/make_standin_autoencoder.py --out /tmp/sd-vae     # elsewhere

The real architecture (83.7 M parameters, x8 downsampling, 4 latent channels, scale 0.18215), shapes, speed and
memory of the LFM paper's autoencoder, without its weights, for the dress rehearsal (`python3 tasks.py
rehearse`) on machines that cannot reach the Hugging Face hub. Load it with
`lfm_core.autoencoders.load("<folder>")`. Its reconstructions are noise; the folder's lfm_autoencoder.json says
it is a stand-in. The default folder is git-ignored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lfm_core import autoencoders

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "data" / "cache" / "standin-sd-vae-ft-mse"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    folder = autoencoders.write_standin(args.out, seed=args.seed)
    ae = autoencoders.load(str(folder))
    n = sum(p.numel() for p in ae.model.parameters())
    print(f"wrote {folder}: {ae!r}, {n / 1e6:.1f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
