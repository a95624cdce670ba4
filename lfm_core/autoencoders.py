r"""Autoencoders for latent flow matching: pretrained ones (diffusers) and this project's offline ones.

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

The offline autoencoders are small ``AutoencoderKL`` s (:func:`offline_config`) trained by
``scripts/train_autoencoder.py`` on offline data; they ship with the package
(``lfm_core/assets/autoencoder_lfw32``, ``autoencoder_digits16`` and ``autoencoder_fashion32``) as
:mod:`lfm_core.store` folders: diffusers' config and weights, checksummed, with a record of the latent scale, the
data and the command that made them. Other local folders are diffusers folders (``save_pretrained``), with the
scale in an ``lfm_autoencoder.json`` beside. Hub ids are loaded from the local cache when there, else downloaded;
when the hub cannot be reached the call fails within seconds and names the offline alternative.

:func:`lfm_core.latent_cache.cached_latents` encodes a data set once and keeps the latents on disk.

Copy with: utils, hub, store, and for :func:`fit_autoencoder` only training, trainer, trainer_config, batches,
checkpoints, devices, runtime, couplings, guidance, solvers (``torch``, ``diffusers``, ``safetensors``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from . import hub, store, utils
from .utils import check_finite, check_nonnegative, check_positive_int, check_tensor

__all__ = ["LatentAutoencoder", "PRETRAINED", "SD_VAE_FT_MSE_CONFIG", "OFFLINE_DIR", "OFFLINE", "load",
           "offline_config", "fit_autoencoder", "write_standin"]

PRETRAINED = {
    "stabilityai/sd-vae-ft-mse": {"cls": "AutoencoderKL", "scale": 0.18215},
    "madebyollin/taesd": {"cls": "AutoencoderTiny", "scale": 1.0},
}
#: the configuration of ``stabilityai/sd-vae-ft-mse`` as published in its ``config.json`` (83.7 M parameters, x8
#: downsampling, 4 latent channels): with random weights, the real architecture, shapes, speed and memory
SD_VAE_FT_MSE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "act_fn": "silu", "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "sample_size": 256,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
OFFLINE_DIR = store.ASSETS / "autoencoder_lfw32"
# the offline autoencoders shipped with the package: name -> store folder (made by scripts/train_autoencoder.py)
OFFLINE = {"offline": OFFLINE_DIR, "offline-digits": store.ASSETS / "autoencoder_digits16",
           "offline-fashion": store.ASSETS / "autoencoder_fashion32"}
#: the latent scale and description of a plain diffusers folder (a store folder keeps them in its record)
META_FILE = "lfm_autoencoder.json"


class LatentAutoencoder:
    """An autoencoder with a latent scale: ``encode(x) = s * E(x)``, ``decode(z) = D(z / s)``.

    Both run in batches, without gradients, on the model's device, and accept and return tensors on
    any device. Images are ``[N, C, H, W]`` in ``[-1, 1]``.
    """

    def __init__(self, model, scale: float, name: str, meta: dict | None = None):
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "encode") or not hasattr(model, "decode"):
            raise TypeError(f"model must be a diffusers autoencoder (AutoencoderKL, AutoencoderTiny), got "
                            f"{type(model).__name__}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self.model = model.eval()
        self.scale = check_nonnegative(scale, "scale", strict=True)
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
        """A hash of the class, configuration, weights and scale: identifies the autoencoder in a latent cache."""
        if self._fingerprint is None:
            config = json.dumps({k: v for k, v in dict(getattr(self.model, "config", {})).items()
                                 if not str(k).startswith("_")}, sort_keys=True, default=repr)
            h = hashlib.sha256(f"{self.kind}:{self.scale!r}:{config}".encode())
            for k, v in sorted(self.model.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def _check_images(self, x):
        check_tensor(x, "images", min_dim=4)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"images must have shape [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"image height and width must be multiples of {self.factor}, got {tuple(x.shape[-2:])}")
        check_finite(x, "images", boundary=True)
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"images must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")

    @torch.no_grad()
    def encode(self, images: torch.Tensor, *, batch_size: int = 64, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents ``s * E(x)``: the posterior mean, or a sample of it with ``sample=True`` (as LFM's code)."""
        self._check_images(images)
        check_positive_int(batch_size, "batch_size")
        utils.check_bool(sample, "sample")
        utils.check_generator(generator)
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
        check_finite(latents, "latents", boundary=True)
        out = []
        for chunk in latents.split(check_positive_int(batch_size, "batch_size")):
            z = chunk.to(self.device, dtype=next(self.model.parameters()).dtype) / self.scale
            out.append(self.model.decode(z).sample.clamp(-1, 1).float().to(latents.device))
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"LatentAutoencoder({self.name!r}, {self.kind}, scale={self.scale:g}, factor={self.factor})"


def offline_config(in_channels: int = 1, latent_channels: int = 4, channels=(16, 32, 32)) -> dict:
    """The configuration of the project's small ``AutoencoderKL``: ``len(channels) - 1`` halvings (x4 by default).

    ``channels`` are the widths of its blocks, each a multiple of 16 (its group normalisation has 16 groups)."""
    check_positive_int(in_channels, "in_channels")
    check_positive_int(latent_channels, "latent_channels")
    if isinstance(channels, (str, bytes)) or not hasattr(channels, "__len__") or not channels:
        raise ValueError(f"channels must be a non-empty sequence of block widths, got {channels!r}")
    for width in channels:
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0 or width % 16:
            raise ValueError(f"channels must hold positive multiples of 16 (16 normalisation groups), got {channels!r}")
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
    data when ``flip``. Returns the :class:`lfm_core.trainer.FitResult`.
    """
    from .training import fit

    check_tensor(images, "images", min_dim=4)
    check_positive_int(batch_size, "batch_size")
    check_nonnegative(kl_weight, "kl_weight")
    utils.check_bool(flip, "flip")
    if images.dim() != 4:
        raise ValueError(f"images must have shape [N, C, H, W], got {tuple(images.shape)}")
    channels = getattr(getattr(model, "config", None), "in_channels", None)
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"images have {images.shape[1]} channels but the model takes {channels} (its in_channels): "
                         f"images must have shape [N, {channels}, H, W], got {tuple(images.shape)}")
    check_finite(images, "images", boundary=True)

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


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: a diffusers folder holds config.json and its weights") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _from_folder(folder: Path, device, dtype, scale: float | None):
    from diffusers import AutoencoderKL, AutoencoderTiny

    if not any((folder / f"diffusion_pytorch_model.{ext}").exists() for ext in ("safetensors", "bin")):
        model, meta = store.load(folder)   # a store folder: verified, the scale in its record
        if scale is None and meta.get("scale") is None:
            raise ValueError(f"{folder / 'config.json'} records no latent scale: pass scale=...")
        if dtype != next(model.parameters()).dtype:   # built in float32; diffusers warns on a cast to the same
            model = model.to(dtype=dtype)
        return LatentAutoencoder(model.to(device), meta["scale"] if scale is None else scale,
                                 meta.get("name", str(folder)), meta)
    meta_path = folder / META_FILE
    meta = _read_json(meta_path) if meta_path.exists() else {}
    cfg = _read_json(folder / "config.json")
    cls = AutoencoderTiny if cfg.get("_class_name") == "AutoencoderTiny" else AutoencoderKL
    try:
        model = cls.from_pretrained(folder, torch_dtype=dtype).to(device)
    except Exception as exc:   # noqa: BLE001 - a truncated or empty weights file raises one of several kinds
        raise ValueError(f"{folder}: diffusers could not load the {cls.__name__} in it ({type(exc).__name__}: "
                         f"{exc})") from exc
    if scale is None:
        # diffusers writes scaling_factor = 0.18215 into every AutoencoderKL's config.json, whatever the model: it
        # says nothing about a custom autoencoder, so only lfm_autoencoder.json or sd-vae-ft-mse's own architecture
        # (a local copy of it) fix the scale; TAESD's latents are already scaled (1.0)
        scale = meta.get("scale")
        if scale is None and cls is AutoencoderTiny:
            scale = float(cfg.get("scaling_factor", 1.0))
        if scale is None and all(cfg.get(k) == v for k, v in SD_VAE_FT_MSE_CONFIG.items() if k != "sample_size"):
            scale = PRETRAINED["stabilityai/sd-vae-ft-mse"]["scale"]
        if scale is None:
            raise ValueError(f"{folder} has no {META_FILE} with a latent scale and is not sd-vae-ft-mse's "
                             "architecture: pass scale=...")
    return LatentAutoencoder(model, scale, meta.get("name", str(folder)), meta)


def write_standin(folder, *, seed: int = 0) -> Path:
    """Write an ``AutoencoderKL`` with sd-vae-ft-mse's configuration and random weights to ``folder``.

    The real architecture, shapes, speed and memory of the LFM paper's autoencoder, without the download: what
    the dress rehearsal (``python3 tasks.py rehearse``) and the tests load where the hub is out of reach. Its
    reconstructions are noise; ``lfm_autoencoder.json`` says so (``"standin": true``). Returns ``folder``.
    """
    from diffusers import AutoencoderKL

    folder = utils.check_writable_dir(folder, "folder")   # '' would write 335 MB into the current folder
    utils.check_seed(seed, "seed")
    torch.manual_seed(seed)
    model = AutoencoderKL(**SD_VAE_FT_MSE_CONFIG)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    meta = {"name": "sd-vae-ft-mse stand-in (random weights)", "scale": PRETRAINED["stabilityai/sd-vae-ft-mse"][
        "scale"], "standin": True, "seed": seed,
        "note": "stabilityai/sd-vae-ft-mse's configuration with random weights: shapes and cost, not quality"}
    (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def load(name_or_path: str = "offline", *, device="cpu", dtype=torch.float32, scale: float | None = None):
    """Load an autoencoder: ``"offline"`` (faces, 32 x 32), ``"offline-digits"`` (digits, 16 x 16),
    ``"offline-fashion"`` (Fashion-MNIST padded to 32 x 32), a hub id of
    :data:`PRETRAINED`, a local diffusers folder, or a store folder (:mod:`lfm_core.store`, verified).

    ``scale`` overrides the latent scale (required for a local diffusers folder without ``lfm_autoencoder.json``
    whose architecture is not sd-vae-ft-mse's).
    A hub id that is neither in the local cache nor reachable fails at once, naming the offline one.
    """
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a str, got {type(name_or_path).__name__}")
    if not name_or_path.strip():
        raise ValueError("name_or_path is empty: name an autoencoder ('offline', 'offline-digits', a hub id) or "
                         "a folder")
    device, dtype = utils.check_device(device), utils.check_float_dtype(dtype)
    if scale is not None:
        check_nonnegative(scale, "scale", strict=True)
    if name_or_path in OFFLINE:
        folder = OFFLINE[name_or_path]
        try:
            return _from_folder(folder, device, dtype, scale)
        except FileNotFoundError:
            raise FileNotFoundError(f"the offline autoencoder {name_or_path!r} is missing from {folder}: run "
                                    "scripts/train_autoencoder.py to make it") from None
    folder = Path(name_or_path)
    if folder.is_dir():
        return _from_folder(folder, device, dtype, scale)
    if name_or_path not in PRETRAINED:
        raise ValueError(f"unknown autoencoder {name_or_path!r}: use {' or '.join(map(repr, OFFLINE))}, a local "
                         "diffusers folder, or one "
                         f"of {', '.join(PRETRAINED)}")
    # the local cache first (works offline), found without the hub library; else the probe, before diffusers is
    # even imported (seconds of its own), then the download
    snapshot = hub.cached_snapshot(name_or_path, patterns=("config.json", "diffusion_pytorch_model*"))
    if snapshot is None:
        hub.require(f"The autoencoder {name_or_path!r}")
    import diffusers

    spec = PRETRAINED[name_or_path]
    cls = getattr(diffusers, spec["cls"])
    model = cls.from_pretrained(snapshot or name_or_path, torch_dtype=dtype)
    return LatentAutoencoder(model.to(device), spec["scale"] if scale is None else scale, name_or_path,
                             {"name": name_or_path})
