r"""Autoencoders for latent flow matching: pretrained ones (diffusers), this project's offline one, a latent cache.

Latent flow matching (Dao et al. 2023, following latent diffusion, Rombach et al. 2022) trains the flow on
``z = s * E(x)``, the encoder's latent scaled by a constant ``s`` chosen so that the latents have roughly
unit variance (the flow starts from ``N(0, I)``, and a mismatch of scales makes the path needlessly long).
``decode`` undoes the scale before the decoder.

=============================== ===================== ===================== =====================
autoencoder                     class (diffusers)     scale ``s``           latent of 256 x 256
=============================== ===================== ===================== =====================
``stabilityai/sd-vae-ft-mse``   ``AutoencoderKL``     0.18215               4 x 32 x 32
``madebyollin/taesd``           ``AutoencoderTiny``   1 (already scaled)    4 x 32 x 32
``offline`` (this project)      ``AutoencoderKL``     from its training     4 x (H/4) x (W/4)
=============================== ===================== ===================== =====================

The offline autoencoder is a small ``AutoencoderKL`` (:func:`offline_config`) trained by
``scripts/train_autoencoder.py`` on offline data; its checkpoint ships with the package
(``lfm_core/assets/autoencoder_lfw32``), with the command that made it. Hub ids are loaded from the local
cache when there, else downloaded; when the hub cannot be reached the call fails within seconds and
names the offline alternative.

:func:`cached_latents` encodes a data set once and stores the latents with a manifest (autoencoder
fingerprint, scale, image size, count, data set); the next call reuses them, and a cache made by another
autoencoder is refused. Depends on ``torch``, ``diffusers``, ``safetensors`` and the sibling modules.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from .data.images import ImageData, hub_reachable, offline_error
from .utils import check_finite, check_positive_int, check_tensor

__all__ = ["LatentAutoencoder", "PRETRAINED", "OFFLINE_DIR", "OFFLINE", "load", "offline_config", "fit_autoencoder",
           "cached_latents"]

PRETRAINED = {
    "stabilityai/sd-vae-ft-mse": {"cls": "AutoencoderKL", "scale": 0.18215},
    "madebyollin/taesd": {"cls": "AutoencoderTiny", "scale": 1.0},
}
OFFLINE_DIR = Path(__file__).resolve().parent / "assets" / "autoencoder_lfw32"
# the offline autoencoders shipped with the package: name -> folder (made by scripts/train_autoencoder.py)
OFFLINE = {"offline": OFFLINE_DIR,
           "offline-digits": Path(__file__).resolve().parent / "assets" / "autoencoder_digits16"}
META_FILE = "lfm_autoencoder.json"


class LatentAutoencoder:
    """An autoencoder with a latent scale: ``encode(x) = s * E(x)``, ``decode(z) = D(z / s)``.

    Both run in batches, without gradients, on the model's device, and accept and return tensors on
    any device. Images are ``[N, C, H, W]`` in ``[-1, 1]``.
    """

    def __init__(self, model, scale: float, name: str, meta: dict | None = None):
        self.model = model.eval()
        self.scale = float(scale)
        self.name = name
        self.meta = dict(meta or {})
        self.kind = type(model).__name__
        self._fingerprint = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def in_channels(self) -> int:
        return int(self.model.config.in_channels)

    @property
    def latent_channels(self) -> int:
        return int(self.model.config.latent_channels)

    @property
    def factor(self) -> int:
        """Spatial downsampling factor of the encoder."""
        if self.kind == "AutoencoderTiny":
            return 8
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    def fingerprint(self) -> str:
        """A hash of the weights and the scale: identifies the autoencoder in a latent cache's manifest."""
        if self._fingerprint is None:
            h = hashlib.sha256(f"{self.kind}:{self.scale}".encode())
            for k, v in sorted(self.model.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def _check_images(self, x):
        check_tensor(x, "images", min_dim=4)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"images must have shape [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"image height and width must be multiples of {self.factor}, got {tuple(x.shape[-2:])}")
        check_finite(x, "images")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"images must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")

    @torch.no_grad()
    def encode(self, images: torch.Tensor, *, batch_size: int = 64, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents ``s * E(x)``: the posterior mean, or a sample of it with ``sample=True`` (as LFM's code)."""
        self._check_images(images)
        check_positive_int(batch_size, "batch_size")
        out = []
        for chunk in images.split(batch_size):
            x = chunk.to(self.device, dtype=next(self.model.parameters()).dtype)
            enc = self.model.encode(x)
            if self.kind == "AutoencoderTiny":
                z = enc.latents
            else:
                dist = enc.latent_dist
                z = dist.sample(generator=generator) if sample else dist.mean
            out.append((z * self.scale).float().to(images.device))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        """Images ``D(z / s)``, clamped to ``[-1, 1]``."""
        check_tensor(latents, "latents", min_dim=4)
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must have shape [N, {self.latent_channels}, h, w], got {tuple(latents.shape)}")
        check_finite(latents, "latents")
        out = []
        for chunk in latents.split(check_positive_int(batch_size, "batch_size")):
            z = chunk.to(self.device, dtype=next(self.model.parameters()).dtype) / self.scale
            out.append(self.model.decode(z).sample.clamp(-1, 1).float().to(latents.device))
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"LatentAutoencoder({self.name!r}, {self.kind}, scale={self.scale:g}, factor={self.factor})"


def offline_config(in_channels: int = 1, latent_channels: int = 4, channels=(16, 32, 32)) -> dict:
    """The configuration of the project's small ``AutoencoderKL``: ``len(channels) - 1`` halvings (x4 by default)."""
    return dict(in_channels=in_channels, out_channels=in_channels,
                down_block_types=("DownEncoderBlock2D",) * len(channels),
                up_block_types=("UpDecoderBlock2D",) * len(channels),
                block_out_channels=tuple(channels), layers_per_block=1, latent_channels=latent_channels,
                norm_num_groups=16, sample_size=32)


def fit_autoencoder(model, images: torch.Tensor, *, steps: int, batch_size: int = 32, lr: float = 1e-3,
                    kl_weight: float = 1e-6, seed: int = 0, progress: bool | None = None, flip: bool = True):
    """Train an ``AutoencoderKL`` on ``images`` (``[N, C, H, W]`` in ``[-1, 1]``): L1 + MSE reconstruction + KL.

    The loss is ``|x - x^|_1 + |x - x^|^2 + kl_weight * KL(q(z|x) || N(0, I))`` per pixel, as a small
    stand-in for the perceptual and adversarial losses of the real VAEs. Horizontal flips augment the
    data when ``flip``. Returns the :class:`lfm_core.training.FitResult`.
    """
    from .training import fit

    check_tensor(images, "images", min_dim=4)

    def loss_fn(step, g):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=g)
        x = images[idx].to(next(model.parameters()).device)
        if flip:
            mask = torch.rand(batch_size, generator=g) < 0.5
            x = torch.where(mask[:, None, None, None].to(x.device), x.flip(-1), x)
        post = model.encode(x).latent_dist
        rec = model.decode(post.sample()).sample
        kl = post.kl().mean() / x[0].numel()
        return (rec - x).abs().mean() + (rec - x).pow(2).mean() + kl_weight * kl

    return fit(model, loss_fn, steps=steps, lr=lr, seed=seed, progress=progress, lr_schedule="cosine",
               desc="autoencoder")


def _from_folder(folder: Path, device, dtype, scale: float | None):
    from diffusers import AutoencoderKL, AutoencoderTiny

    meta_path = folder / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    cfg = json.loads((folder / "config.json").read_text())
    cls = AutoencoderTiny if cfg.get("_class_name") == "AutoencoderTiny" else AutoencoderKL
    model = cls.from_pretrained(folder, torch_dtype=dtype).to(device)
    if scale is None:
        if "scale" not in meta:
            raise ValueError(f"{folder} has no {META_FILE} with a latent scale: pass scale=...")
        scale = meta["scale"]
    return LatentAutoencoder(model, scale, meta.get("name", str(folder)), meta)


def load(name_or_path: str = "offline", *, device="cpu", dtype=torch.float32, scale: float | None = None):
    """Load an autoencoder: ``"offline"`` (faces, 32 x 32), ``"offline-digits"`` (digits, 16 x 16), a hub id of
    :data:`PRETRAINED`, or a local diffusers folder.

    ``scale`` overrides the latent scale (required for a local folder without ``lfm_autoencoder.json``).
    A hub id that is neither in the local cache nor reachable fails at once, naming the offline one.
    """
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a str, got {type(name_or_path).__name__}")
    if name_or_path in OFFLINE:
        folder = OFFLINE[name_or_path]
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"the offline autoencoder {name_or_path!r} is missing from {folder}: run "
                                    "scripts/train_autoencoder.py to make it")
        return _from_folder(folder, device, dtype, scale)
    folder = Path(name_or_path)
    if folder.is_dir():
        return _from_folder(folder, device, dtype, scale)
    if name_or_path not in PRETRAINED:
        raise ValueError(f"unknown autoencoder {name_or_path!r}: use {' or '.join(map(repr, OFFLINE))}, a local "
                         "diffusers folder, or one "
                         f"of {', '.join(PRETRAINED)}")
    import diffusers

    spec = PRETRAINED[name_or_path]
    cls = getattr(diffusers, spec["cls"])
    try:  # the local cache first: works offline when the weights were downloaded before
        model = cls.from_pretrained(name_or_path, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError):
        if not hub_reachable():
            raise offline_error(f"The autoencoder {name_or_path!r}") from None
        model = cls.from_pretrained(name_or_path, torch_dtype=dtype)
    return LatentAutoencoder(model.to(device), spec["scale"] if scale is None else scale, name_or_path,
                             {"name": name_or_path})


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cached_latents(autoencoder: LatentAutoencoder, data: ImageData, cache_dir, *, batch_size: int = 64,
                   overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Latents (and labels) of ``data``, encoded once and stored in ``cache_dir`` with a manifest.

    The manifest records the autoencoder's name and fingerprint, the scale, the image size, the count
    and the data set. A matching cache is loaded instead of encoding again; a cache made by another
    autoencoder (or of other data) raises ``ValueError`` unless ``overwrite=True``.
    """
    from safetensors.torch import load_file, save_file

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"autoencoder": autoencoder.name, "fingerprint": autoencoder.fingerprint(),
                "scale": autoencoder.scale, "image_size": list(data.images.shape[1:]), "count": len(data),
                "dataset": data.name, "source": data.source}
    mpath, tpath = cache_dir / "manifest.json", cache_dir / "latents.safetensors"
    if mpath.exists() and tpath.exists() and not overwrite:
        old = json.loads(mpath.read_text())
        if old == manifest:
            tensors = load_file(tpath)
            return tensors["latents"], tensors.get("labels")
        diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
        raise ValueError(f"the latent cache in {cache_dir} was made differently ({diff}): refusing to use it; "
                         "pass overwrite=True or another cache_dir")
    latents = autoencoder.encode(data.images, batch_size=batch_size)
    tensors = {"latents": latents.contiguous()}
    if data.labels is not None:
        tensors["labels"] = data.labels.contiguous()
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".safetensors", delete=False) as tmp:
        tmp_name = tmp.name
    try:
        save_file(tensors, tmp_name)
        os.replace(tmp_name, tpath)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    _atomic_write(mpath, (json.dumps(manifest, indent=1) + "\n").encode())
    return latents, data.labels
