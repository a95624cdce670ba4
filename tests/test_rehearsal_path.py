"""The full-mode CelebA-HQ path of notebook 04, at the library level and small: what CI can afford of the dress
rehearsal (`python3 tasks.py rehearse` runs the notebooks themselves). CelebA-HQ images (the real sample when
LFM_CELEBA_HQ_DIR is set, else a generated folder) streamed through sd-vae-ft-mse's architecture into the latent
cache, unet-small trained by train_cfm, dopri5 sampling, decoding, and FID through its real code path."""

import math

import pytest
import torch
from test_celeba import make_stargan

from lfm_core import autoencoders, images, latent_cache, metrics, nets, paths, solvers, training


@pytest.fixture(scope="module")
def sd_vae_standin():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(**autoencoders.SD_VAE_FT_MSE_CONFIG)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(83.65e6, rel=1e-3)
    return autoencoders.LatentAutoencoder(model, 0.18215, "sd-vae-ft-mse architecture, random weights")


def test_celeba_path_end_to_end(sd_vae_standin, tmp_path, shared_celeba_hq):
    root = shared_celeba_hq if shared_celeba_hq is not None else make_stargan(tmp_path / "celeba")
    size = 64  # the rehearsal uses 256; the path is the same, 16 x cheaper
    train_src = images.stream("celeba_hq", size=size, split="train", root=root).head(6)
    held = images.load("celeba_hq", size=size, split="val", root=root, limit=2)
    ae = sd_vae_standin
    latents, labels = latent_cache.cached_latents(ae, train_src, tmp_path / "cache", batch_size=4)
    n = len(train_src)
    assert latents.shape == (n, 4, size // 8, size // 8) and labels.shape == (n,)
    c, h = latents.shape[1], latents.shape[-1]
    model = nets.UNetVelocity(c, h, preset="small")
    res = training.train_cfm(model, paths.LinearPath(0.0), lambda n, g: torch.randn(n, c, h, h, generator=g),
                             latents, labels=None, steps=2, batch_size=8, lr=2e-4, warmup=1, ema_decay=0.9995,
                             grad_clip=1.0, precision="auto", progress=False, out_dir=tmp_path / "ckpt",
                             checkpoint_every=1)
    assert len(res.losses) == 2 and (tmp_path / "ckpt" / "latest").exists()
    z0 = torch.randn(2, c, h, h, generator=torch.Generator().manual_seed(1))
    sol = solvers.integrate(res.ema, z0, method="dopri5", atol=1e-5, rtol=1e-5, max_nfe=2000)
    x = ae.decode(sol.x, batch_size=2)
    assert x.shape == (2, 3, size, size) and sol.nfe >= 6
    value = metrics.fid(held.images, x, feature_extractor=metrics.StandinFeatures())
    assert math.isfinite(value) and value >= 0
