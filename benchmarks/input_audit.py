#!/usr/bin/env python3
"""An audit of lfm_core's public API on bad inputs: is each one refused with a clear error naming the argument?

    python benchmarks/input_audit.py                       # every case and the hub timings, into benchmarks/results/
    python benchmarks/input_audit.py --quick --out /tmp/x  # a small subset, no hub timings (tests/test_benchmarks.py)
    python benchmarks/input_audit.py --report-only benchmarks/results/input_audit.json

Each *call* of the table :data:`CALLS` has valid arguments (its baseline, which must run) and, for some of its
arguments, an argument *type* (a positive int, a probability, a point cloud, a folder...). :data:`BAD` gives every
type its bad values, each of a *kind* (wrong type, out of domain, empty, NaN/inf, wrong shape, complex/bool); a
case is the call with one argument replaced by one bad value. Contradictory arguments, bad paths and damaged files
(truncated, flipped bytes, empty; made in a temporary folder) are listed per call as extra cases. Values that may
well be valid (a ``t_span`` outside [0, 1] for an ODE integrator, a seed of 0, ...) are not used; the cases judged
ambiguous are run and listed apart, outside the counts.

Every case runs in a worker process that reports when it starts and how it ended; a case still running after
``--deadline`` seconds is a hang (the worker is killed and a new one goes on with the next case), a worker that dies
is a crash. Outcomes:

* clear: ValueError / TypeError, or a documented error of lfm_core (StoreError, CheckpointError, HubUnavailable,
  ConvergenceError, NonFiniteError, the FloatingPointError of solvers; and FileNotFoundError and the other OSErrors
  for paths and files), whose message names the argument (or the file);
* vague: such an error that does not name it;
* unclear: any other exception;
* silent: a result for an input that has none;
* hang, crash: as above.

The hub paths (``autoencoders.load`` of both pretrained autoencoders, ``images.load("celeba_hq")`` with no local
folder, ``metrics.fid_status()``, ``hub.require``) are timed behind a proxy that accepts connections and never
answers (``HTTPS_PROXY``) and with a DNS that hangs (``socket.getaddrinfo`` sleeping 30 s), each in a fresh
process with an empty ``HF_HOME`` and ``TORCH_HOME``; each must fail within 5 s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: flags, command line, report files)

KINDS = ["wrong type", "out of domain", "empty", "NaN/inf", "wrong shape", "complex/bool", "contradictory",
         "bad path", "damaged file"]
OUTCOMES = ["clear", "vague", "unclear", "silent", "hang", "crash"]
NAN, INF = float("nan"), float("inf")
STRAY_ENTRY = "input_audit_entry"   # pretrained.add's entry: where folder='' takes it into lfm_core/assets/
PATH_WORDS = ("a_file_", "no_such_folder", "empty_dir_")   # a path case is also clear when its message names the path
QUICK_MODULES = ("paths", "toy", "utils", "store")   # --quick: these modules' cases only (fast, no hub, no nets)


# ------------------------------------------------------------------------------------------ bad values by type
def T(*shape, fill=None, dtype=None):
    """A small float tensor (seeded normal values, or ``fill``)."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g) if fill is None else torch.full(shape, fill)
    return x if dtype is None else x.to(dtype)


def _with(value_at, shape, v):
    def make():
        x = T(*shape)
        x.view(-1)[value_at] = v
        return x
    return make


def tensor_bad(shape, wrong_shape=None):
    """Bad values of a float tensor argument whose valid shape is ``shape``."""
    import torch

    wrong_shape = wrong_shape or [(shape[0],) + tuple(s + 1 for s in shape[1:]) if len(shape) > 1
                                  else (shape[0], 2, 2)]
    return [("wrong type", "'abc'", lambda: "abc"), ("wrong type", "3.0", lambda: 3.0),
            ("empty", f"empty {(0,) + tuple(shape[1:])}", lambda: torch.empty((0,) + tuple(shape[1:]))),
            ("NaN/inf", "one NaN", _with(0, shape, NAN)), ("NaN/inf", "one inf", _with(-1, shape, INF)),
            ("complex/bool", "complex tensor", lambda: T(*shape).to(torch.complex64)),
            ("complex/bool", "bool tensor", lambda: torch.ones(shape, dtype=torch.bool)),
            *[("wrong shape", f"shape {tuple(s)}", (lambda s=s: T(*s))) for s in wrong_shape]]


def int_bad(low=1):
    return [("wrong type", "'3'", lambda: "3"), ("wrong type", "2.5", lambda: 2.5),
            ("out of domain", str(low - 1), lambda: low - 1), ("out of domain", "-5", lambda: -5),
            ("complex/bool", "True", lambda: True), ("complex/bool", "(2+0j)", lambda: 2 + 0j),
            ("NaN/inf", "nan", lambda: NAN), ("NaN/inf", "inf", lambda: INF)]


def float_bad(low=0.0, strict=False, high=None, allow_inf=False):
    """Bad values of a real number in [low, high] (``strict``: low itself excluded)."""
    out = [("wrong type", "'0.5'", lambda: "0.5"),
           ("out of domain", str(low - 1), lambda: low - 1.0),
           ("NaN/inf", "nan", lambda: NAN), ("complex/bool", "True", lambda: True),
           ("complex/bool", "0.5j", lambda: 0.5j)]
    if strict:
        out.append(("out of domain", str(low), lambda: low))
    if high is not None:
        out.append(("out of domain", str(high + 1), lambda: high + 1.0))
    if not allow_inf and high is None:
        out.append(("NaN/inf", "inf", lambda: INF))
    return out


def choice_bad():
    return [("out of domain", "'no-such'", lambda: "no-such"), ("empty", "''", lambda: ""),
            ("wrong type", "3", lambda: 3), ("wrong type", "['a']", lambda: ["a"])]


def bool_bad():
    return [("complex/bool", "'yes'", lambda: "yes"), ("complex/bool", "2", lambda: 2),
            ("wrong type", "1.0", lambda: 1.0)]


def generator_bad():
    return [("wrong type", "'g'", lambda: "g"), ("wrong type", "42 (a seed, not a Generator)", lambda: 42)]


def seed_bad():
    return [("out of domain", "-1", lambda: -1), ("out of domain", "2**70", lambda: 2 ** 70),
            ("wrong type", "1.5", lambda: 1.5), ("wrong type", "'3'", lambda: "3"),
            ("complex/bool", "True", lambda: True), ("NaN/inf", "nan", lambda: NAN)]


def callable_bad():
    return [("wrong type", "'abc'", lambda: "abc"), ("wrong type", "3", lambda: 3)]


def dtype_bad():
    import torch
    return [("wrong type", "'float32'", lambda: "float32"), ("out of domain", "torch.int64", lambda: torch.int64),
            ("complex/bool", "torch.complex64", lambda: torch.complex64)]


def device_bad():
    return [("out of domain", "'gpu9'", lambda: "gpu9"), ("wrong type", "3.5", lambda: 3.5)]


def time_bad(batch):
    import torch
    return [("out of domain", "1.5", lambda: 1.5), ("out of domain", "-0.1", lambda: -0.1),
            ("NaN/inf", "nan", lambda: NAN), ("wrong type", "'0.5'", lambda: "0.5"),
            ("complex/bool", "complex tensor", lambda: torch.full((batch,), 0.5, dtype=torch.complex64)),
            ("complex/bool", "bool tensor", lambda: torch.ones(batch, dtype=torch.bool)),
            ("wrong shape", f"shape ({batch + 1},)", lambda: torch.full((batch + 1,), 0.5))]


def folder_bad(fx, must_exist=True):
    """Bad folders (each case gets a fresh file, so that a call that replaces it cannot spoil the next case)."""
    out = [("bad path", "''", lambda: ""), ("bad path", "a file", fx.new_file), ("wrong type", "3", lambda: 3)]
    if must_exist:
        out.append(("bad path", "missing folder", fx.new_missing))
    return out


BAD = {"posint": int_bad, "nonnegint": lambda: int_bad(0), "generator": generator_bad, "seed": seed_bad,
       "choice": choice_bad, "bool": bool_bad, "callable": callable_bad, "dtype": dtype_bad, "device": device_bad,
       "prob": lambda: float_bad(0.0, high=1.0), "pos": lambda: float_bad(0.0, strict=True),
       "nonneg": lambda: float_bad(0.0)}


# ------------------------------------------------------------------------------------------ fixtures on disk
class Fixtures:
    """Small files in a temporary folder: image folders, parquet files, stored networks, each also damaged."""

    def __init__(self, root: Path):
        self.root = root
        self.file = str(root / "a_file.txt")
        self.missing = str(root / "no_such_folder")
        self.empty_dir = str(root / "empty_dir")
        self.stargan = str(root / "stargan")
        self.parquet = str(root / "parquet")
        self.net = str(root / "net")
        self.ckpt_run = str(root / "ckpt_run")
        self.mask_hq = str(root / "maskhq")
        self.fashion = str(root / "fashion")

    def new_file(self) -> str:
        fd, path = tempfile.mkstemp(prefix="a_file_", suffix=".txt", dir=self.root)
        os.write(fd, b"not a folder\n")
        os.close(fd)
        return path

    def new_missing(self) -> str:
        return str(Path(tempfile.mkdtemp(dir=self.root)) / "no_such_folder")

    def new_empty_dir(self) -> str:
        return tempfile.mkdtemp(prefix="empty_dir_", dir=self.root)

    def damaged(self, name: str) -> str:
        return str(self.root / "damaged" / name)

    def build(self):
        import io

        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq
        import torch
        from PIL import Image

        from lfm_core import nets, store

        r = self.root
        Path(self.file).write_text("not a folder\n")
        Path(self.empty_dir).mkdir()

        def jpeg(seed, size=8):
            buf = io.BytesIO()
            Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                buf, "JPEG")
            return buf.getvalue()

        for split in ("train", "val"):
            for k, cls in enumerate(("female", "male")):
                d = r / "stargan" / split / cls
                d.mkdir(parents=True)
                for i in range(2):
                    (d / f"{i}.jpg").write_bytes(jpeg(10 * k + i))
        good = jpeg(99)

        def stargan_with(name, data, suffix=".jpg"):
            d = r / "damaged" / name
            for split in ("train", "val"):
                for cls in ("female", "male"):
                    (d / split / cls).mkdir(parents=True)
                    (d / split / cls / "0.jpg").write_bytes(good)
            (d / "train" / "male" / f"bad{suffix}").write_bytes(data)

        stargan_with("jpeg_truncated", good[: len(good) // 2])
        stargan_with("jpeg_empty", b"")
        flipped = bytearray(good)
        for i in range(20, len(flipped) - 2, 7):
            flipped[i] ^= 0xFF
        stargan_with("jpeg_flipped", bytes(flipped))
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, "PNG")
        png = bytearray(buf.getvalue())   # IHDR claims 30000 x 30000 pixels (a decompression bomb)
        png[16:24] = struct.pack(">II", 30000, 30000)
        import zlib
        png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
        stargan_with("png_bomb", bytes(png), ".png")

        def parquet(path, labels, images=None):
            images = images or [{"bytes": jpeg(i), "path": f"{i}.jpg"} for i in range(len(labels))]
            pq.write_table(pa.table({"image": images, "label": labels}), path)

        Path(self.parquet).mkdir()
        parquet(Path(self.parquet) / "train-00000.parquet", [0, 1, 0, 1])
        parquet(Path(self.parquet) / "validation-00000.parquet", [0, 1])
        whole = (Path(self.parquet) / "train-00000.parquet").read_bytes()
        for name, labels, images, data in (
                ("parquet_truncated", None, None, whole[: len(whole) // 2]), ("parquet_empty", None, None, b""),
                ("parquet_flipped", None, None, whole[:40] + bytes(b ^ 0xFF for b in whole[40:200]) + whole[200:]),
                ("parquet_null_label", [0, None], None, None), ("parquet_string_label", ["a", "b"], None, None),
                ("parquet_label_7", [0, 7], None, None),
                ("parquet_bad_image", [0, 1], [{"bytes": good, "path": "a"}, {"bytes": b"junk", "path": "b"}], None)):
            d = r / "damaged" / name
            d.mkdir(parents=True)
            if data is not None:
                (d / "train-00000.parquet").write_bytes(data)
            else:
                parquet(d / "train-00000.parquet", labels, images)

        torch.manual_seed(0)
        store.save(self.net, nets.MLP(2, hidden=8, depth=1), {"made by": "input_audit"})
        import shutil
        for name, change in (("net_truncated_weights", ("model.safetensors", lambda b: b[: len(b) // 2])),
                             ("net_empty_weights", ("model.safetensors", lambda b: b"")),
                             ("net_flipped_weights", ("model.safetensors",
                                                      lambda b: b[:-16] + bytes(x ^ 0xFF for x in b[-16:]))),
                             ("net_broken_config", ("config.json", lambda b: b[: len(b) // 2])),
                             ("net_empty_config", ("config.json", lambda b: b"")),
                             ("net_broken_checksums", ("checksums.json", lambda b: b"{not json"))):
            d = Path(self.damaged(name))
            shutil.copytree(self.net, d)
            f = d / change[0]
            f.write_bytes(change[1](f.read_bytes()))

        # CelebAMask-HQ: a valid folder, and one whose 0.jpg is truncated
        for folder, data in ((r / "maskhq", good), (r / "damaged" / "maskhq_truncated", good[:100])):
            (folder / "CelebA-HQ-img").mkdir(parents=True)
            (folder / "CelebA-HQ-img" / "0.jpg").write_bytes(data)
            (folder / "CelebAMask-HQ-mask-anno" / "0").mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 255, dtype=np.uint8)).save(
                folder / "CelebAMask-HQ-mask-anno" / "0" / "00000_skin.png")
        # Fashion-MNIST: tiny valid IDX files
        fm = r / "fashion"
        fm.mkdir()
        for prefix in ("train", "t10k"):
            (fm / f"{prefix}-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + struct.pack(">III", 2, 28, 28)
                                                             + bytes(2 * 28 * 28))
            (fm / f"{prefix}-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + struct.pack(">I", 2) + bytes([1, 2]))
        # a damaged diffusers folder for autoencoders.load
        ae = r / "damaged" / "ae_broken_config"
        ae.mkdir(parents=True)
        (ae / "config.json").write_text('{"_class_name": "AutoencoderKL", ')
        (ae / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 16)
        # a latent cache folder and an IDX folder of damaged files
        idx = r / "damaged" / "idx"
        idx.mkdir(parents=True)
        (idx / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03\0\0")
        (idx / "train-labels-idx1-ubyte").write_bytes(b"junk")
        (idx / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03\0\0")
        (idx / "t10k-labels-idx1-ubyte").write_bytes(b"junk")
        return self


# ------------------------------------------------------------------------------------------ the calls
@dataclasses.dataclass
class Call:
    """One call of the public API: ``fn(**valid())`` must run; ``args`` maps an argument to its bad values (a type
    of :data:`BAD` or a list of (kind, description, make)); ``extra``: (kind, description, kwargs-changes maker,
    names) cases; ``names``: words one of which a message must hold to name the argument (default: its name)."""
    module: str
    label: str
    fn: object
    valid: object
    args: dict = dataclasses.field(default_factory=dict)
    extra: list = dataclasses.field(default_factory=list)
    names: dict = dataclasses.field(default_factory=dict)
    ambiguous: list = dataclasses.field(default_factory=list)   # (kind, description, changes maker, why)


@dataclasses.dataclass
class Case:
    index: int
    module: str
    call: str
    arg: str
    kind: str
    value: str
    names: tuple
    run: object
    ambiguous: str = ""
    baseline: bool = False


def _returning(error, fn):
    """``fn``, with ``error`` returned instead of raised: a call whose valid arguments end in that error (a host
    that cannot be reached), so that a bad argument let through to it counts as accepted."""
    def run(**kw):
        try:
            return fn(**kw)
        except error as exc:
            return exc
    return run


def _method(make_obj, name):
    def fn(**kw):
        return getattr(make_obj(), name)(**kw)
    return fn


def calls(fx: Fixtures) -> list:
    """The table of calls, module by module."""
    import torch

    from lfm_core import (
        autoencoders,
        average_velocity,
        batches,
        bounds,
        celeba,
        checkpoints,
        compare,
        conditioning,
        couplings,
        devices,
        guidance,
        hub,
        image_files,
        images,
        interpolants,
        latent_cache,
        metrics,
        mixtures,
        nets,
        paths,
        pretrained,
        runtime,
        solvers,
        store,
        straightness,
        toy,
        trainer,
        trainer_config,
        training,
        utils,
    )

    P = lambda: T(6, 2)   # noqa: E731  (a small point cloud)
    lin = paths.LinearPath
    mlp = lambda dim=2, **kw: nets.MLP(dim, hidden=8, depth=1, **kw)   # noqa: E731
    img = lambda: torch.rand(2, 1, 8, 8) * 2 - 1   # noqa: E731
    masks = lambda: (torch.rand(2, 1, 8, 8) > 0.5).float()   # noqa: E731
    velocity = lambda x, t: -x   # noqa: E731
    gm = lambda: mixtures.GaussianMixture(torch.tensor([[0.0, 0.0], [2.0, 2.0]]), torch.tensor([0.5, 0.5]))  # noqa
    dig = lambda: images.load("digits", limit=8, size=8)   # noqa: E731
    ae = lambda: autoencoders.load("offline-digits")   # noqa: E731
    unet = lambda **kw: nets.UNetVelocity(1, 8, preset="tiny", **kw)   # noqa: E731
    files = lambda: images.stream("celeba_hq", root=fx.stargan, size=8, workers=1)   # noqa: E731
    tc = lambda **kw: trainer_config.TrainerConfig(**{"steps": 2, "batch_size": 4, **kw})   # noqa: E731

    def mk_trainer(**kw):
        model = mlp()
        args = dict(model=model, batch_fn=lambda step, g: {"x": T(4, 2)},
                    loss_fn=lambda m, x: m(x, torch.full((4,), 0.5)).pow(2).mean(),
                    config=tc(), progress=False)
        args.update(kw)
        return trainer.Trainer(**args)

    def fit_trainer(out_dir=None, resume=True, override=False, **kw):
        return mk_trainer(out_dir=out_dir, **kw).fit(resume=resume, override=override)

    def trained_run():
        d = Path(tempfile.mkdtemp(dir=fx.root))
        fit_trainer(out_dir=str(d))
        return d

    def damaged_ckpt(which):
        d = trained_run()
        ck = sorted(d.glob("ckpt-*"))[-1]
        f = ck / which
        f.write_bytes(f.read_bytes()[: max(0, f.stat().st_size // 2)])
        return ck

    def damaged_cache():
        d = fresh_dir()
        latent_cache.cached_latents(ae(), dig(), d)
        for f in Path(d).glob("*.safetensors"):
            f.write_bytes(f.read_bytes()[:-40])
        return d

    def fresh_dir():
        return str(Path(tempfile.mkdtemp(dir=fx.root)) / "out")

    def traj():
        return torch.linspace(0, 1, 5)[:, None, None] * T(6, 2)[None]

    def swap_env(var, value, fn):
        def run(**kw):
            old = os.environ.get(var)
            os.environ[var] = value
            try:
                return fn(**kw)
            finally:
                if old is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = old
        return run

    tensor = tensor_bad
    out = []
    A = out.append

    # ----- paths
    for cls, arg in ((paths.LinearPath, "sigma"), (paths.VPPath, "sigma"), (paths.TargetPath, "sigma_min")):
        A(Call("paths", f"{cls.__name__}", cls, lambda: {}, {arg: float_bad(0.0, high=1.0 if arg == "sigma_min"
                                                                             else None)}))
    A(Call("paths", "BridgePath", paths.BridgePath, lambda: {},
           {"sigma": "nonneg", "t_min": float_bad(0.0, strict=True, high=0.5)}))
    A(Call("paths", "LinearPath.sample", lambda **kw: lin(0.1).sample(**kw),
           lambda: dict(x0=P(), x1=P(), t=torch.full((6,), 0.5)),
           {"x0": tensor((6, 2)), "x1": tensor((6, 2)), "t": time_bad(6), "noise": tensor((6, 2))[3:],
            "generator": "generator"},
           extra=[("contradictory", "x1 of 5 rows for x0 of 6", lambda: {"x1": T(5, 2)}, ("x0", "x1"))]))
    A(Call("paths", "VPPath.sample_time", lambda **kw: paths.VPPath(0.1).sample_time(**kw), lambda: dict(n=4),
           {"n": "posint", "generator": "generator", "dtype": "dtype", "device": "device"}))
    A(Call("paths", "TargetPath.schedule", lambda **kw: paths.TargetPath().schedule(**kw),
           lambda: dict(t=torch.full((3,), 0.5)), {"t": time_bad(3)[:6]}))

    # ----- toy
    A(Call("toy", "sample", toy.sample, lambda: dict(name="moons", n=8),
           {"name": "choice", "n": "posint", "generator": "generator"}))
    A(Call("toy", "gaussian_mixture", toy.gaussian_mixture, lambda: dict(name="8gaussians"), {"name": "choice"}))

    # ----- utils (the shared checks and helpers)
    A(Call("utils", "as_time", utils.as_time, lambda: dict(t=0.5, batch=4, like=T(4, 2)),
           {"t": time_bad(4), "batch": "posint", "like": tensor((4, 2))[:2]}))
    A(Call("utils", "expand_like", utils.expand_like, lambda: dict(t=torch.full((4,), 0.5), x=T(4, 2)),
           {"t": [("wrong shape", "shape (5,)", lambda: torch.full((5,), 0.5)), ("wrong type", "'a'", lambda: "a")]}))
    A(Call("utils", "randn_like", utils.randn_like, lambda: dict(x=T(4, 2)),
           {"x": tensor((4, 2))[:2], "generator": "generator"}))
    A(Call("utils", "RunningMedian", utils.RunningMedian, lambda: dict(window=5), {"window": "posint"}))
    A(Call("utils", "RunningMedian.add", _method(lambda: utils.RunningMedian(5), "add"), lambda: dict(value=1.0),
           {"value": [("wrong type", "'x'", lambda: "x"), ("complex/bool", "1j", lambda: 1j)]},
           ambiguous=[("NaN/inf", "nan", lambda: {"value": NAN}, "a median of losses may skip or keep NaN")]))
    A(Call("utils", "check_writable_dir", utils.check_writable_dir, lambda: dict(path=fresh_dir(), name="out_dir"),
           {"path": folder_bad(fx, must_exist=False)}, names={"path": ("out_dir",)}))
    A(Call("utils", "global_norm", utils.global_norm, lambda: dict(tensors=[T(3)]),
           {"tensors": [("wrong type", "'x'", lambda: "x"), ("wrong type", "[1.0]", lambda: [1.0])]},
           ambiguous=[("empty", "[]", lambda: {"tensors": []}, "the norm of nothing is 0"),
                      ("NaN/inf", "[tensor with NaN]", lambda: {"tensors": [T(3, fill=NAN)]},
                       "a NaN norm is the right answer for a divergence check")]))

    # ----- mixtures
    A(Call("mixtures", "GaussianMixture", mixtures.GaussianMixture,
           lambda: dict(means=torch.tensor([[0.0, 0.0], [2.0, 2.0]]), stds=torch.tensor([0.5, 0.5])),
           {"means": tensor((2, 2), [(2, 2, 2)]),
            "stds": [("out of domain", "negative", lambda: torch.tensor([0.5, -0.5])),
                     ("out of domain", "zero", lambda: torch.tensor([0.5, 0.0])),
                     ("NaN/inf", "nan", lambda: torch.tensor([0.5, NAN])),
                     ("wrong shape", "3 stds for 2 means", lambda: torch.tensor([0.5, 0.5, 0.5])),
                     ("complex/bool", "complex", lambda: torch.tensor([0.5, 0.5], dtype=torch.complex64)),
                     ("wrong type", "'x'", lambda: "x")],
            "weights": [("out of domain", "negative", lambda: torch.tensor([1.5, -0.5])),
                        ("out of domain", "all zero", lambda: torch.tensor([0.0, 0.0])),
                        ("NaN/inf", "nan", lambda: torch.tensor([NAN, 1.0])),
                        ("wrong shape", "3 weights", lambda: torch.tensor([0.2, 0.3, 0.5])),
                        ("complex/bool", "bool", lambda: torch.tensor([True, True])),
                        ("wrong type", "'x'", lambda: "x")]}))
    A(Call("mixtures", "GaussianMixture.sample", _method(gm, "sample"), lambda: dict(n=5),
           {"n": "posint", "generator": "generator", "dtype": "dtype", "return_labels": "bool"}))
    A(Call("mixtures", "GaussianMixture.log_prob", _method(gm, "log_prob"), lambda: dict(x=P()),
           {"x": tensor((6, 2), [(6, 3), (6,)])}))
    A(Call("mixtures", "GaussianMixture.velocity", _method(gm, "velocity"), lambda: dict(path=lin()),
           {"path": [("wrong type", "'linear'", lambda: "linear")], "source_std": "pos"}))

    # ----- couplings
    A(Call("couplings", "pair", couplings.pair, lambda: dict(x0=P(), x1=P(), method="ot"),
           {"x0": tensor((6, 2)), "x1": tensor((6, 2)), "method": "choice", "replace": "bool",
            "block_size": "posint", "generator": "generator",
            "labels": [("wrong shape", "5 labels for 6 points", lambda: torch.zeros(5, dtype=torch.long)),
                       ("wrong type", "float labels 0.5", lambda: torch.full((6,), 0.5)),
                       ("wrong type", "'abc'", lambda: "abc"),
                       ("complex/bool", "complex labels", lambda: torch.zeros(6, dtype=torch.complex64))]},
           extra=[("contradictory", "x1 of 4 rows, replace=False", lambda: {"x1": T(4, 2)}, ("x0", "x1")),
                  ("contradictory", "x1 of dim 3", lambda: {"x1": T(6, 3)}, ("x0", "x1"))]))
    A(Call("couplings", "pair_indices (sinkhorn)", couplings.pair_indices,
           lambda: dict(x0=P(), x1=P(), method="sinkhorn", reg=0.5),
           {"reg": "pos", "tol": "pos"}))
    A(Call("couplings", "plan", couplings.plan, lambda: dict(x0=P(), x1=P(), method="sinkhorn", reg=0.5),
           {"method": "choice", "reg": "pos", "tol": "pos"}))
    A(Call("couplings", "sinkhorn", couplings.sinkhorn, lambda: dict(cost=T(4, 4).abs(), reg=0.5),
           {"cost": tensor((4, 4), [(4,), (2, 2, 4, 4)]), "reg": "pos", "tol": "pos", "max_iter": "posint"}))

    # ----- solvers
    A(Call("solvers", "integrate", solvers.integrate, lambda: dict(velocity=velocity, x=P(), steps=4),
           {"velocity": "callable", "x": tensor((6, 2))[:7], "method": "choice", "steps": "posint",
            "atol": "pos", "rtol": "pos", "return_trajectory": "bool", "enable_grad": "bool",
            "max_nfe": "posint",
            "t_span": [("wrong shape", "(0.0,)", lambda: (0.0,)), ("wrong type", "'ab'", lambda: "ab"),
                       ("NaN/inf", "(nan, 1)", lambda: (NAN, 1.0)), ("NaN/inf", "(0, inf)", lambda: (0.0, INF)),
                       ("complex/bool", "(0, 1j)", lambda: (0.0, 1j)),
                       ("complex/bool", "(False, True)", lambda: (False, True)),
                       ("wrong shape", "(0, 0.5, 1)", lambda: (0.0, 0.5, 1.0))],
            "cond": [("wrong type", "'abc'", lambda: "abc"), ("wrong type", "[1]", lambda: [1])]},
           extra=[("wrong shape", "velocity returning [6, 1]", lambda: {"velocity": lambda x, t: x[:, :1]},
                   ("velocity",)),
                  ("NaN/inf", "velocity returning NaN", lambda: {"velocity": lambda x, t: x * NAN}, ("velocity",)),
                  ("contradictory", "velocity returning float64", lambda: {"velocity": lambda x, t: -x.double()},
                   ("velocity",)),
                  ],
           ambiguous=[("contradictory", "dopri5 with max_nfe=2", lambda: {"method": "dopri5", "max_nfe": 2},
                       "two valid values; reaching the limit is a condition of the run, not of the input")]))
    A(Call("solvers", "log_likelihood", solvers.log_likelihood,
           lambda: dict(velocity=velocity, x=P(), method="euler", steps=4),
           {"velocity": "callable", "x": tensor((6, 2))[:7], "method": "choice", "steps": "posint",
            "divergence": "choice", "generator": "generator", "source_log_prob": "callable",
            "return_nfe": "bool"}))
    A(Call("solvers", "standard_normal_log_prob", solvers.standard_normal_log_prob, lambda: dict(x=P()),
           {"x": tensor((6, 2))[:6]}))

    # ----- metrics
    A(Call("metrics", "wasserstein2", metrics.wasserstein2, lambda: dict(a=P(), b=P()),
           {"a": tensor((6, 2), [(6, 3)]), "b": tensor((6, 2), [(6, 3)])}))
    A(Call("metrics", "path_energy", metrics.path_energy, lambda: dict(trajectory=traj()),
           {"trajectory": tensor((5, 6, 2), [(5, 6)]),
            "times": [("wrong shape", "4 times for 5 frames", lambda: torch.linspace(0, 1, 4)),
                      ("out of domain", "decreasing times", lambda: torch.linspace(1, 0, 5)),
                      ("NaN/inf", "nan time", lambda: torch.tensor([0, NAN, 0.5, 0.7, 1.0])),
                      ("wrong type", "'abc'", lambda: "abc")]}))
    A(Call("metrics", "normalized_path_energy", metrics.normalized_path_energy,
           lambda: dict(trajectory=traj(), source=P(), target=P() + 1),
           {"source": tensor((6, 2), [(6, 3)]), "target": tensor((6, 2), [(6, 3)])},
           extra=[("out of domain", "source equal to target (W2 = 0)", lambda: {"target": P()}, ("source", "target",
                                                                                                    "W2"))]))
    A(Call("metrics", "straightness", metrics.straightness, lambda: dict(trajectory=traj()),
           {"trajectory": tensor((5, 6, 2), [(5, 6)])}))
    A(Call("metrics", "psnr", metrics.psnr, lambda: dict(reference=img(), estimate=img()),
           {"reference": tensor((2, 1, 8, 8))[:7], "estimate": tensor((2, 1, 8, 8))[:7], "data_range": "pos"}))
    A(Call("metrics", "nearest_neighbour_distance", metrics.nearest_neighbour_distance,
           lambda: dict(samples=P(), train=P()), {"samples": tensor((6, 2)), "train": tensor((6, 2))}))
    A(Call("metrics", "StandinFeatures", metrics.StandinFeatures, lambda: dict(dim=8),
           {"dim": "posint", "seed": "seed"}))
    rgb = lambda: torch.rand(4, 3, 16, 16)   # noqa: E731
    A(Call("metrics", "fid (stand-in features)", metrics.fid,
           lambda: dict(real=rgb(), fake=rgb(), feature_extractor=metrics.StandinFeatures(dim=8)),
           {"real": tensor((4, 3, 16, 16), [(4, 1, 16, 16), (3, 16, 16)]), "fake": tensor((4, 3, 16, 16))[:7],
            "batch_size": "posint", "feature_extractor": [("wrong type", "'inception'", lambda: "inception")],
            "device": "device"}))
    A(Call("metrics", "fid_status", metrics.fid_status, lambda: dict(feature_extractor=metrics.StandinFeatures()),
           {"feature_extractor": [("wrong type", "'inception'", lambda: "inception"), ("wrong type", "3", lambda: 3)]}))

    # ----- nets
    A(Call("nets", "MLP", nets.MLP, lambda: dict(dim=2, hidden=8, depth=1),
           {"dim": "posint", "hidden": "posint", "depth": "nonnegint", "activation": "choice",
            "cond_channels": "nonnegint"},
           ambiguous=[("out of domain", "depth=0", lambda: {"depth": 0}, "a linear map [x, t] -> x is a network")]))
    A(Call("nets", "MLP.forward", lambda **kw: mlp()(**kw), lambda: dict(x=P(), t=torch.full((6,), 0.5)),
           {"x": tensor((6, 2), [(6, 3), (6,)]), "t": time_bad(6)[2:]},
           extra=[("contradictory", "cond for a network without cond_channels", lambda: {"cond": T(6, 2)},
                   ("cond",))]))
    A(Call("nets", "MLPEnsemble", nets.MLPEnsemble, lambda: dict(n_members=2, dim=2, hidden=8, depth=1),
           {"n_members": "posint", "dim": "posint", "activation": "choice"}))
    A(Call("nets", "MLPEnsemble.from_models", nets.MLPEnsemble.from_models, lambda: dict(models=[mlp(), mlp()]),
           {"models": [("empty", "[]", lambda: []), ("wrong type", "[MLP, 'x']", lambda: [mlp(), "x"]),
                       ("contradictory", "members of dims 2 and 3", lambda: [mlp(2), mlp(3)])]}))
    A(Call("nets", "MLPEnsemble.member", _method(lambda: nets.MLPEnsemble(2, 2, hidden=8, depth=1), "member"),
           lambda: dict(i=1), {"i": [("out of domain", "2 of 2 members", lambda: 2), ("wrong type", "'a'", lambda: "a"),
                                     ("wrong type", "1.5", lambda: 1.5), ("complex/bool", "True", lambda: True)]}))
    A(Call("nets", "AffineVelocity", nets.AffineVelocity, lambda: dict(dim=2, hidden=4),
           {"dim": "posint", "hidden": "posint"}))
    A(Call("nets", "AffineVelocity.lipschitz", _method(lambda: nets.AffineVelocity(2, 4), "lipschitz"),
           lambda: dict(n_times=5), {"n_times": "posint"}))
    A(Call("nets", "UNetVelocity", nets.UNetVelocity, lambda: dict(channels=1, sample_size=8),
           {"channels": "posint", "sample_size": "posint", "preset": "choice",
            "num_classes": int_bad()[:6], "cond_channels": int_bad(0)[:6]}))
    A(Call("nets", "UNetVelocity.forward", lambda **kw: unet(num_classes=3)(**kw),
           lambda: dict(x=img(), t=torch.full((2,), 0.5), labels=torch.tensor([0, 1])),
           {"x": tensor((2, 1, 8, 8), [(2, 2, 8, 8), (2, 8, 8)]), "t": time_bad(2)[:5],
            "labels": [("out of domain", "label 5 of 3 classes", lambda: torch.tensor([0, 5])),
                       ("out of domain", "label -1", lambda: torch.tensor([0, -1])),
                       ("wrong type", "float labels", lambda: torch.tensor([0.5, 1.0])),
                       ("wrong shape", "3 labels for 2 images", lambda: torch.tensor([0, 1, 2]))]}))
    A(Call("nets", "UNetVelocity.forward (cond)", lambda **kw: unet(cond_channels=2)(**kw),
           lambda: dict(x=img(), t=torch.full((2,), 0.5), cond=T(2, 2, 8, 8)),
           {"cond": tensor((2, 2, 8, 8), [(2, 3, 8, 8)])}))
    A(Call("nets", "DiTVelocity", nets.DiTVelocity, lambda: dict(channels=4, sample_size=8),
           {"channels": "posint", "sample_size": int_bad()[:6] + [("out of domain", "7 (odd, patch 2)", lambda: 7)],
            "preset": "choice"}))

    # ----- interpolants and straightness
    A(Call("interpolants", "BernsteinSchedule", interpolants.BernsteinSchedule, lambda: dict(degree=4),
           {"degree": "posint"}))
    A(Call("interpolants", "BernsteinSchedule.from_coefficients", interpolants.BernsteinSchedule.from_coefficients,
           lambda: dict(coefficients=torch.tensor([0.0, 0.3, 0.7, 1.0])),
           {"coefficients": [("out of domain", "decreasing", lambda: torch.tensor([0.0, 0.7, 0.3, 1.0])),
                             ("out of domain", "not ending at 1", lambda: torch.tensor([0.0, 0.3, 0.7, 0.9])),
                             ("NaN/inf", "nan", lambda: torch.tensor([0.0, NAN, 0.7, 1.0])),
                             ("empty", "[]", lambda: torch.tensor([])),
                             ("wrong type", "'abc'", lambda: "abc"),
                             ("complex/bool", "complex", lambda: torch.tensor([0.0, 0.3, 0.7, 1.0]) + 0j)]}))
    A(Call("interpolants", "BernsteinSchedule.forward", lambda **kw: interpolants.BernsteinSchedule(4)(**kw),
           lambda: dict(t=torch.full((3,), 0.5)), {"t": time_bad(3)[:6]}))
    A(Call("interpolants", "AffineInterpolant.sample", _method(lambda: interpolants.AffineInterpolant(4), "sample"),
           lambda: dict(x0=P(), x1=P(), t=torch.full((6,), 0.5)),
           {"x0": tensor((6, 2)), "x1": tensor((6, 2)), "t": time_bad(6)}))
    A(Call("interpolants", "AffineInterpolant.invert", _method(lambda: interpolants.AffineInterpolant(4), "invert"),
           lambda: dict(x=P(), x1=P(), t=torch.full((6,), 0.5)),
           {"t": [("out of domain", "t = 1 (singular)", lambda: torch.ones(6))] + time_bad(6)[:3],
            "x": tensor((6, 2))[2:5]}))
    A(Call("interpolants", "GlowInterpolant", interpolants.GlowInterpolant, lambda: dict(dim=2, layers=1, hidden=8),
           {"dim": int_bad()[:7], "layers": "posint", "hidden": "posint"},
           ambiguous=[("out of domain", "dim=1", lambda: {"dim": 1},
                       "affine couplings split the coordinates; one coordinate may still be supported")]))
    A(Call("interpolants", "GlowInterpolant.sample",
           _method(lambda: interpolants.GlowInterpolant(2, layers=1, hidden=8), "sample"),
           lambda: dict(x0=P(), x1=P(), t=torch.full((6,), 0.5)),
           {"x0": tensor((6, 2), [(6, 3)]), "t": time_bad(6)[:4]}))
    A(Call("interpolants", "load_pretrained", interpolants.load_pretrained, lambda: dict(task="moons"),
           {"task": "choice", "root": folder_bad(fx)}))
    glow = lambda: interpolants.GlowInterpolant(2, layers=1, hidden=8)   # noqa: E731
    A(Call("straightness", "optimal_velocity", straightness.optimal_velocity,
           lambda: dict(interpolant=glow(), data=P()),
           {"interpolant": [("wrong type", "'glow'", lambda: "glow")], "data": tensor((6, 2), [(6,)]),
            "t_max": float_bad(0.0, strict=True, high=1.0), "chunk": "posint"}))
    A(Call("straightness", "material_derivative", straightness.material_derivative,
           lambda: dict(velocity=velocity, x=P(), t=torch.full((6,), 0.5)),
           {"velocity": "callable", "x": tensor((6, 2))[:5], "t": time_bad(6)[:4]}))
    A(Call("straightness", "straightness_loss", straightness.straightness_loss,
           lambda: dict(velocity=velocity, x=P(), t=torch.full((6,), 0.5)),
           {"velocity": "callable", "x": tensor((6, 2))[2:5], "t": time_bad(6)[:3]}))
    A(Call("straightness", "fit_interpolant", straightness.fit_interpolant,
           lambda: dict(interpolant=glow(), source=lambda n, g: torch.randn(n, 2, generator=g), data=T(16, 2),
                        steps=1, batch_size=4, n_reference=8, progress=False),
           {"steps": "posint", "batch_size": "posint", "n_reference": "posint",
            "t_max": float_bad(0.0, strict=True, high=1.0), "lr": "pos", "seed": seed_bad()[:4],
            "data": tensor((16, 2))[:5], "grad_clip": float_bad(0.0, strict=True)[2:5]}))
    A(Call("straightness", "fit_straight_flow", straightness.fit_straight_flow,
           lambda: dict(interpolant=glow(), model=mlp(), source=lambda n, g: torch.randn(n, 2, generator=g),
                        data=T(16, 2), levels=1, interpolant_steps=1, model_steps=1, batch_size=4, progress=False,
                        n_reference=8),
           {"levels": "posint", "model_steps": "posint", "interpolant_steps": "posint",
            "interpolant_lr": "pos"}))

    # ----- bounds
    A(Call("bounds", "reconstruction_error", bounds.reconstruction_error,
           lambda: dict(encode=lambda x: x, decode=lambda z: z, x=P()),
           {"encode": "callable", "decode": "callable", "x": tensor((6, 2))[:5], "batch_size": "posint"}))
    A(Call("bounds", "spectral_norm", bounds.spectral_norm, lambda: dict(matrix=T(3, 3)),
           {"matrix": tensor((3, 3), [(3,), (2, 3, 3)])}))
    A(Call("bounds", "jacobian_norm_lower_bound", bounds.jacobian_norm_lower_bound,
           lambda: dict(f=lambda x: 2 * x, points=P(), iters=3),
           {"f": "callable", "points": tensor((6, 2))[:5], "iters": "posint", "generator": "generator"}))
    A(Call("bounds", "flow_matching_error", bounds.flow_matching_error,
           lambda: dict(v_hat=velocity, v_true=velocity, sample_zt=lambda t, n: T(n, 2), n=8, n_times=2),
           {"v_hat": "callable", "n": "posint", "n_times": "posint"}))
    A(Call("bounds", "gaussian_w2", bounds.gaussian_w2,
           lambda: dict(m1=torch.zeros(2), c1=torch.eye(2), m2=torch.ones(2), c2=torch.eye(2)),
           {"m1": [("wrong shape", "3 coordinates", lambda: torch.zeros(3)), ("NaN/inf", "nan", lambda: T(2, fill=NAN)),
                   ("complex/bool", "complex", lambda: torch.zeros(2, dtype=torch.complex64)),
                   ("wrong type", "'abc'", lambda: "abc")],
            "c1": [("out of domain", "not symmetric PSD", lambda: torch.tensor([[1.0, 0.0], [0.0, -1.0]])),
                   ("wrong shape", "3x3", lambda: torch.eye(3)), ("NaN/inf", "nan", lambda: T(2, 2, fill=NAN)),
                   ("out of domain", "not symmetric", lambda: torch.tensor([[1.0, 0.9], [0.0, 1.0]]))]}))
    A(Call("bounds", "gaussian_pushforward", bounds.gaussian_pushforward,
           lambda: dict(affine_map=lambda t: (torch.eye(2), torch.zeros(2)), mean=torch.zeros(2), cov=torch.eye(2),
                        steps=4),
           {"affine_map": "callable", "steps": "posint",
            "cov": [("wrong shape", "3x3", lambda: torch.eye(3)), ("NaN/inf", "nan", lambda: T(2, 2, fill=NAN))]}))
    A(Call("bounds", "latent_factor", bounds.latent_factor, lambda: dict(lipschitz_v=1.0),
           {"lipschitz_v": "nonneg"}))
    A(Call("bounds", "w2_bound", bounds.w2_bound,
           lambda: dict(recon=0.1, lipschitz_dec=1.0, lipschitz_v=1.0, fm_error=0.1),
           {"recon": "nonneg", "lipschitz_dec": "nonneg", "lipschitz_v": "nonneg", "fm_error": "nonneg"}))

    # ----- guidance
    lab = lambda: torch.tensor([0, 1, 2, 1])   # noqa: E731
    A(Call("guidance", "drop_labels", guidance.drop_labels, lambda: dict(labels=lab(), null_label=3, p=0.5),
           {"labels": [("wrong type", "float labels", lambda: torch.tensor([0.0, 1.5])),
                       ("complex/bool", "bool labels", lambda: torch.tensor([True, False])),
                       ("empty", "empty", lambda: torch.tensor([], dtype=torch.long)),
                       ("wrong type", "'abc'", lambda: "abc")],
            "null_label": [("wrong type", "3.7", lambda: 3.7), ("wrong type", "'3'", lambda: "3"),
                           ("complex/bool", "True", lambda: True), ("out of domain", "-1", lambda: -1)],
            "p": "prob", "generator": "generator"},
           extra=[("contradictory", "null_label 1 among the labels", lambda: {"null_label": 1}, ("null_label",))]))
    A(Call("guidance", "check_labels", guidance.check_labels, lambda: dict(labels=lab(), num_classes=3),
           {"labels": [("out of domain", "label 3 of 3 classes", lambda: torch.tensor([0, 3])),
                       ("out of domain", "label -1", lambda: torch.tensor([0, -1])),
                       ("wrong type", "float", lambda: torch.tensor([0.0, 1.0])),
                       ("wrong shape", "2-D", lambda: torch.zeros(2, 2, dtype=torch.long))],
            "num_classes": "posint", "allow_null": "bool", "batch": [("contradictory", "batch 5 for 4 labels",
                                                                      lambda: 5)]},
           names={"batch": ("batch", "labels")}))
    A(Call("guidance", "guided_velocity", guidance.guided_velocity,
           lambda: dict(model=unet(num_classes=3), labels=torch.tensor([0, 1]), scale=2.0),
           {"model": [("wrong type", "'unet'", lambda: "unet"),
                      ("contradictory", "a model without classes", lambda: unet())],
            "labels": [("out of domain", "label 7", lambda: torch.tensor([0, 7])),
                       ("wrong type", "float", lambda: torch.tensor([0.5, 1.0]))],
            "scale": [("NaN/inf", "nan", lambda: NAN), ("NaN/inf", "inf", lambda: INF),
                      ("wrong type", "'2'", lambda: "2"), ("complex/bool", "2j", lambda: 2j),
                      ("complex/bool", "True", lambda: True)]}))

    # ----- conditioning
    A(Call("conditioning", "check_masks", conditioning.check_masks, lambda: dict(masks=masks(), images=img()),
           {"masks": [("out of domain", "values 0.5", lambda: torch.full((2, 1, 8, 8), 0.5)),
                      ("wrong shape", "3-D", lambda: torch.ones(2, 8, 8)),
                      ("wrong shape", "16x16 for 8x8 images", lambda: torch.ones(2, 1, 16, 16)),
                      ("NaN/inf", "nan", lambda: torch.full((2, 1, 8, 8), NAN)),
                      ("complex/bool", "complex", lambda: torch.ones(2, 1, 8, 8, dtype=torch.complex64)),
                      ("wrong type", "'abc'", lambda: "abc")]}))
    A(Call("conditioning", "rectangle_masks", conditioning.rectangle_masks, lambda: dict(n=2, size=8),
           {"n": "posint", "size": "posint", "min_frac": float_bad(0.0, strict=True, high=1.0),
            "max_frac": float_bad(0.0, strict=True, high=1.0), "generator": "generator"},
           extra=[("contradictory", "min_frac 0.8 > max_frac 0.3", lambda: {"min_frac": 0.8, "max_frac": 0.3},
                   ("min_frac", "max_frac"))]))
    A(Call("conditioning", "stroke_masks", conditioning.stroke_masks, lambda: dict(n=2, size=8),
           {"n": "posint", "size": "posint", "strokes": "posint", "vertices": "posint",
            "width_frac": float_bad(0.0, strict=True)}))
    A(Call("conditioning", "mask_images", conditioning.mask_images, lambda: dict(images=img(), masks=masks()),
           {"images": tensor((2, 1, 8, 8))[:6], "masks": [("wrong shape", "3 masks for 2 images",
                                                           lambda: torch.ones(3, 1, 8, 8))]}))
    A(Call("conditioning", "downsample_mask", conditioning.downsample_mask, lambda: dict(masks=masks(), size=4),
           {"size": "posint", "masks": [("wrong shape", "2-D", lambda: torch.ones(8, 8))]}))
    A(Call("conditioning", "composite", conditioning.composite,
           lambda: dict(generated=img(), original=img(), masks=masks()),
           {"generated": tensor((2, 1, 8, 8))[:6], "original": tensor((2, 1, 8, 8))[3:6],
            "masks": [("out of domain", "values 0.5", lambda: torch.full((2, 1, 8, 8), 0.5))]}))
    A(Call("conditioning", "smooth_fill", conditioning.smooth_fill, lambda: dict(images=img(), masks=masks()),
           {"sigma": "pos", "iterations": "posint", "images": tensor((2, 1, 8, 8))[3:6]},
           extra=[("out of domain", "all-hole masks", lambda: {"masks": torch.ones(2, 1, 8, 8)}, ("masks",)),
                  ],
           ambiguous=[("out of domain", "sigma=1e6", lambda: {"sigma": 1e6},
                       "a valid (huge) blur; the point is that it must not hang")]))
    A(Call("conditioning", "region_psnr", conditioning.region_psnr,
           lambda: dict(reference=img(), estimate=img(), region=masks()),
           {"data_range": "pos", "region": [("empty", "an empty region", lambda: torch.zeros(2, 1, 8, 8)),
                                            ("wrong shape", "16x16", lambda: torch.ones(2, 1, 16, 16))]}))
    seg = lambda: torch.randint(0, 3, (2, 8, 8))   # noqa: E731
    A(Call("conditioning", "check_segmentation", conditioning.check_segmentation,
           lambda: dict(maps=seg(), num_classes=3),
           {"maps": [("out of domain", "class 3 of 3", lambda: torch.full((2, 8, 8), 3)),
                     ("wrong type", "float maps", lambda: torch.full((2, 8, 8), 0.5)),
                     ("wrong shape", "1-D", lambda: torch.zeros(8, dtype=torch.long))],
            "num_classes": "posint"}))
    A(Call("conditioning", "intensity_segmentation", conditioning.intensity_segmentation,
           lambda: dict(images=img(), num_classes=3),
           {"images": tensor((2, 1, 8, 8))[2:6], "num_classes": int_bad()[:6],
            "blur": int_bad()[:6],
            "thresholds": [("out of domain", "decreasing", lambda: torch.tensor([0.5, -0.5])),
                           ("wrong shape", "3 thresholds for 3 classes", lambda: torch.tensor([-0.5, 0.0, 0.5]))]},
           ambiguous=[("out of domain", "num_classes=1", lambda: {"num_classes": 1}, "a trivial segmentation")]))
    A(Call("conditioning", "one_hot_maps", conditioning.one_hot_maps, lambda: dict(maps=seg(), num_classes=3),
           {"num_classes": "posint", "size": "posint",
            "maps": [("out of domain", "class 5", lambda: torch.full((2, 8, 8), 5))]}))
    A(Call("conditioning", "SemanticEncoder", conditioning.SemanticEncoder,
           lambda: dict(num_classes=3, latent_size=4), {"num_classes": "posint", "latent_size": "posint",
                                                        "out_channels": "posint"}))
    A(Call("conditioning", "SemanticEncoder.forward", lambda **kw: conditioning.SemanticEncoder(3, 4)(**kw),
           lambda: dict(maps=seg()),
           {"maps": [("out of domain", "class 3 of 3", lambda: torch.full((2, 8, 8), 3)),
                     ("wrong type", "float", lambda: torch.full((2, 8, 8), 0.5)),
                     ("wrong type", "'abc'", lambda: "abc")]}))
    A(Call("conditioning", "ConditionedVelocity.forward",
           lambda **kw: conditioning.ConditionedVelocity(unet(cond_channels=4), conditioning.SemanticEncoder(
               3, 8, out_channels=4))(**kw),
           lambda: dict(x=img(), t=torch.full((2,), 0.5), maps=seg()),
           {"maps": [("out of domain", "class 9", lambda: torch.full((2, 8, 8), 9)),
                     ("wrong shape", "3 maps for 2 images", lambda: torch.zeros(3, 8, 8, dtype=torch.long))],
            "keep": [("wrong type", "'abc'", lambda: "abc"), ("wrong shape", "3 for 2 images",
                                                              lambda: torch.ones(3, dtype=torch.bool))]}))
    A(Call("conditioning", "ConditionedVelocity", conditioning.ConditionedVelocity,
           lambda: dict(net=unet(cond_channels=4), encoder=conditioning.SemanticEncoder(3, 8, out_channels=4)),
           {"net": [("wrong type", "'net'", lambda: "net")], "encoder": [("wrong type", "'enc'", lambda: "enc")]}))

    # ----- average velocity
    av = average_velocity
    amodel = lambda: av.AverageVelocity(nets.MLP(2, hidden=8, depth=1, cond_channels=1))   # noqa: E731
    A(Call("average_velocity", "AverageVelocity", av.AverageVelocity,
           lambda: dict(net=nets.MLP(2, hidden=8, depth=1, cond_channels=1)),
           {"net": [("wrong type", "'net'", lambda: "net"), ("wrong type", "3", lambda: 3)]}))
    A(Call("average_velocity", "AverageVelocity.forward", lambda **kw: amodel()(**kw),
           lambda: dict(x=P(), r=torch.full((6,), 0.2), t=torch.full((6,), 0.7)),
           {"x": tensor((6, 2))[:6], "r": time_bad(6)[:6], "t": time_bad(6)[:6]}))
    A(Call("average_velocity", "TimePairs", av.TimePairs, lambda: dict(),
           {"equal_fraction": "prob", "distribution": "choice", "std": "pos",
            "mean": [("NaN/inf", "nan", lambda: NAN), ("wrong type", "'0'", lambda: "0"),
                     ("complex/bool", "1j", lambda: 1j)]}))
    A(Call("average_velocity", "TimePairs.sample", _method(av.TimePairs, "sample"), lambda: dict(n=4),
           {"n": "posint", "generator": "generator", "dtype": "dtype"}))
    A(Call("average_velocity", "meanflow_loss", av.meanflow_loss, lambda: dict(model=amodel(), x0=P(), x1=P()),
           {"model": [("wrong type", "a plain MLP (not an average model)", lambda: mlp())],
            "x0": tensor((6, 2))[:7], "x1": tensor((6, 2))[2:7], "power": float_bad(0.0)[:6], "eps": "pos",
            "tangent": "choice", "generator": "generator"},
           extra=[("contradictory", "r without t", lambda: {"r": torch.zeros(6)}, ("r", "t")),
                  ],
           ambiguous=[("contradictory", "r > t", lambda: {"r": torch.full((6,), 0.8), "t": torch.full((6,), 0.2)},
                       "the average velocity is defined backwards in time too")]))
    A(Call("average_velocity", "train_meanflow", av.train_meanflow,
           lambda: dict(model=amodel(), source=T(16, 2), target=T(16, 2), steps=1, batch_size=4, progress=False),
           {"steps": "posint", "batch_size": "posint", "coupling": "choice", "tangent": "choice",
            "out_dir": folder_bad(fx, must_exist=False)[:3], "resume": "bool"}))
    A(Call("average_velocity", "sample", av.sample, lambda: dict(model=amodel(), x=P()),
           {"model": [("wrong type", "'m'", lambda: "m")], "x": tensor((6, 2))[:7], "steps": "posint",
            "t_span": [("wrong shape", "(0,)", lambda: (0.0,)), ("NaN/inf", "(nan, 1)", lambda: (NAN, 1.0)),
                       ("wrong type", "'ab'", lambda: "ab")],
            "return_trajectory": "bool"}))
    A(Call("average_velocity", "exact_average_velocity", av.exact_average_velocity,
           lambda: dict(velocity=velocity, x=P(), r=0.2, t=0.7),
           {"velocity": "callable", "method": "choice",
            "r": [("NaN/inf", "nan", lambda: NAN), ("wrong type", "'0'", lambda: "0"),
                  ("complex/bool", "1j", lambda: 1j)],
            "atol": "pos"}))
    A(Call("average_velocity", "GaussianFlow", av.GaussianFlow, lambda: dict(mean=torch.zeros(2), std=0.5),
           {"mean": [("NaN/inf", "nan", lambda: T(2, fill=NAN)), ("complex/bool", "complex",
                                                                 lambda: torch.zeros(2, dtype=torch.complex64)),
                     ("wrong type", "'0'", lambda: "0")],
            "std": "pos"}))
    A(Call("average_velocity", "from_paper_convention", av.from_paper_convention,
           lambda: dict(u_paper=lambda x, r, t: x),
           {"u_paper": "callable"}))

    # ----- training
    A(Call("training", "cfm_loss", training.cfm_loss, lambda: dict(model=mlp(), path=lin(), x0=P(), x1=P()),
           {"model": "callable", "path": [("wrong type", "'linear'", lambda: "linear"),
                                          ("wrong type", "None", lambda: None)],
            "x0": tensor((6, 2))[:7], "x1": tensor((6, 2))[:7], "t": time_bad(6)[:5], "coupling": "choice",
            "generator": "generator",
            "coupling_kwargs": [("wrong type", "'reg'", lambda: "reg"),
                                ("out of domain", "{'nope': 1}", lambda: {"nope": 1})]}))
    A(Call("training", "train_cfm", training.train_cfm,
           lambda: dict(model=mlp(), path=lin(), source=T(16, 2), target=T(16, 2), steps=1, batch_size=4,
                        progress=False),
           {"steps": "posint", "batch_size": "posint", "coupling": "choice", "sampling": "choice",
            "paired": "bool", "prefetch": "nonnegint", "label_dropout": "prob", "device": "device",
            "source": tensor((16, 2))[:7], "target": tensor((16, 2))[:7],
            "out_dir": folder_bad(fx, must_exist=False)[:3],
            "labels": [("wrong shape", "5 labels for 16 points", lambda: torch.zeros(5, dtype=torch.long)),
                       ("wrong type", "float labels", lambda: torch.full((16,), 0.5))]},
           extra=[("contradictory", "paired with 16 and 12 points", lambda: {"paired": True, "target": T(12, 2)},
                   ("paired", "source", "target")),
                  ("contradictory", "label_dropout without labels", lambda: {"label_dropout": 0.2},
                   ("label_dropout", "labels")),
                  ("wrong type", "an unknown trainer field", lambda: {"learning_rate": 0.1}, ("learning_rate",))]))
    A(Call("training", "reflow_pairs", training.reflow_pairs,
           lambda: dict(model=mlp(), source=T(8, 2), steps=2),
           {"model": "callable", "n": "posint", "steps": "posint", "batch_size": "posint", "generator": "generator",
            "source": tensor((8, 2))[:6]}))
    A(Call("training", "fit", training.fit,
           lambda: (lambda m: dict(model=m, loss_fn=lambda s, g: m(T(4, 2), 0.5).pow(2).mean(), steps=1,
                                   progress=False))(mlp()),
           {"model": [("wrong type", "'mlp'", lambda: "mlp")], "loss_fn": "callable", "steps": "posint",
            "seed": "seed", "out_dir": folder_bad(fx, must_exist=False)[:3], "resume": "bool", "override": "bool"},
           extra=[("NaN/inf", "a loss_fn that returns NaN",
                   lambda: {"loss_fn": lambda s, g: torch.tensor(NAN, requires_grad=True)}, ("loss",)),
                  ("wrong shape", "a loss_fn that returns a vector",
                   lambda: {"loss_fn": lambda s, g: torch.ones(3, requires_grad=True)}, ("loss",))]))

    # ----- trainer config and Trainer
    A(Call("trainer_config", "TrainerConfig", trainer_config.TrainerConfig, lambda: dict(steps=2, batch_size=4),
           {"steps": "posint", "batch_size": "posint", "lr": "pos", "weight_decay": "nonneg",
            "lr_schedule": "choice", "warmup": "nonnegint", "ema_decay": float_bad(0.0, high=1.0),
            "grad_clip": "pos", "precision": "choice", "checkpoint_every": "nonnegint",
            "sample_every": "nonnegint", "keep_checkpoints": "posint", "log_every": "nonnegint", "seed": "seed",
            "divergence": float_bad(1.0, strict=True)[:6],
            "skip_steps": [("wrong type", "'3'", lambda: "3"), ("out of domain", "(-1,)", lambda: (-1,)),
                           ("wrong type", "(1.5,)", lambda: (1.5,))]},
           ambiguous=[("contradictory", "warmup 5 beyond steps 2", lambda: {"warmup": 5},
                       "a warm-up longer than the run is odd but well defined"),
                      ("out of domain", "keep_checkpoints=0", lambda: {"keep_checkpoints": 0},
                       "may mean: keep none but the newest")]))
    A(Call("trainer_config", "TrainerConfig.lr_at", _method(lambda: tc(), "lr_at"), lambda: dict(step=1),
           {"step": int_bad(0)[:6]}))
    A(Call("trainer_config", "FitResult.smoothed", _method(lambda: trainer_config.FitResult([1.0, 2.0], 0.1),
                                                           "smoothed"),
           lambda: dict(window=2), {"window": "posint"}))
    A(Call("trainer", "Trainer", mk_trainer, lambda: dict(),
           {"model": [("wrong type", "'mlp'", lambda: "mlp")], "batch_fn": "callable", "loss_fn": "callable",
            "config": [("wrong type", "{'steps': 2}", lambda: {"steps": 2}), ("wrong type", "None", lambda: None)],
            "out_dir": folder_bad(fx, must_exist=False)[:3], "device": "device", "progress": bool_bad()[:2],
            "sample_fn": [("wrong type", "'s'", lambda: "s")], "callback": [("wrong type", "'c'", lambda: "c")]}))
    A(Call("trainer", "Trainer.fit", fit_trainer, lambda: dict(out_dir=fresh_dir()),
           {"resume": "bool", "override": "bool", "out_dir": folder_bad(fx, must_exist=False)[1:2]}))
    A(Call("trainer", "Trainer.load_checkpoint", lambda path, **kw: mk_trainer().load_checkpoint(path, **kw),
           lambda: dict(path=str(sorted(trained_run().glob("ckpt-*"))[-1])),
           {"path": folder_bad(fx) + [("wrong type", "a list", lambda: [fx.new_file()])]},
           extra=[(("damaged file", f"{w} of the checkpoint {how}",
                    lambda w=w: {"path": str(damaged_ckpt(w))}, (w, "ckpt-")))
                  for w, how in (("model.safetensors", "truncated"), ("state.pt", "truncated"),
                                 ("config.json", "truncated"), ("checksums.json", "truncated"))]))

    # ----- checkpoints
    A(Call("checkpoints", "verify", checkpoints.verify,
           lambda: dict(path=str(sorted(trained_run().glob("ckpt-*"))[-1])),
           {"path": folder_bad(fx)},
           extra=[("damaged file", "model.safetensors truncated", lambda: {"path": str(damaged_ckpt(
               "model.safetensors"))}, ("model.safetensors",)),
                  ("damaged file", "state.pt truncated", lambda: {"path": str(damaged_ckpt("state.pt"))},
                   ("state.pt",))]))
    A(Call("checkpoints", "newest", checkpoints.newest, lambda: dict(out_dir=str(trained_run())),
           {"out_dir": folder_bad(fx)[:3], "at_most": int_bad(0)[:6]}))
    A(Call("checkpoints", "clean_partial", checkpoints.clean_partial, lambda: dict(out_dir=str(trained_run())),
           {"out_dir": folder_bad(fx)[:3]}))
    A(Call("checkpoints", "model_config", checkpoints.model_config, lambda: dict(model=mlp()),
           {"model": [("wrong type", "'mlp'", lambda: "mlp"), ("wrong type", "3", lambda: 3)]}))
    A(Call("checkpoints", "parameter_signature", checkpoints.parameter_signature, lambda: dict(model=mlp()),
           {"model": [("wrong type", "'mlp'", lambda: "mlp")]}))
    A(Call("checkpoints", "set_rng_state", checkpoints.set_rng_state,
           lambda: dict(state=checkpoints.rng_state(torch.device("cpu")), device=torch.device("cpu")),
           {"state": [("wrong type", "'s'", lambda: "s"), ("empty", "{}", lambda: {})]}))

    # ----- store
    A(Call("store", "save", store.save, lambda: dict(folder=fresh_dir(), model=mlp(), record={"a": 1}),
           {"folder": folder_bad(fx, must_exist=False)[:3], "model": [("wrong type", "'mlp'", lambda: "mlp")],
            "record": [("wrong type", "'r'", lambda: "r"), ("wrong type", "{'a': object()}",
                                                             lambda: {"a": object()}),
                       ("NaN/inf", "{'a': nan}", lambda: {"a": NAN})],
            "half": "bool", "tensors": [("wrong type", "'t'", lambda: "t"), ("wrong type", "{'a': 3}",
                                                                             lambda: {"a": 3})]}))
    damaged_nets = ["net_truncated_weights", "net_empty_weights", "net_flipped_weights", "net_broken_config",
                    "net_empty_config", "net_broken_checksums"]
    for fn_name in ("load", "verify", "load_state"):
        fn = getattr(store, fn_name)
        A(Call("store", fn_name, fn, lambda: dict(folder=fx.net),
               {"folder": folder_bad(fx) + [("bad path", "an empty folder", fx.new_empty_dir)]},
               extra=[("damaged file", name, (lambda name=name: {"folder": fx.damaged(name)}),
                       (name, ".json", ".safetensors")) for name in damaged_nets]))
    A(Call("store", "load_state (name)", store.load_state, lambda: dict(folder=fx.net),
           {"name": [("out of domain", "'nope'", lambda: "nope"), ("wrong type", "3", lambda: 3)]}))
    A(Call("store", "build", store.build, lambda: dict(class_name="MLP", config={"dim": 2, "hidden": 8, "depth": 1}),
           {"class_name": choice_bad(), "config": [("wrong type", "'c'", lambda: "c"),
                                                   ("out of domain", "{'dim': 0}", lambda: {"dim": 0}),
                                                   ("out of domain", "{'nope': 1}", lambda: {"dim": 2, "nope": 1})]}))
    A(Call("store", "write_folder", store.write_folder,
           lambda: dict(folder=fresh_dir(), write=lambda tmp: (Path(tmp) / "a").write_text("a")),
           {"folder": folder_bad(fx, must_exist=False)[:3], "write": "callable"}))
    A(Call("store", "tidy", store.tidy, lambda: dict(parent=fx.root), {"parent": folder_bad(fx)[2:3]},
           ambiguous=[("bad path", "a file", lambda: {"parent": fx.new_file()}, "nothing to tidy: a no-op is fine"),
                      ("bad path", "missing folder", lambda: {"parent": fx.new_missing()},
                       "nothing to tidy: a no-op is fine")]))
    A(Call("store", "os_error", store.os_error, lambda: dict(exc=OSError(28, "No space"), what="writing x"),
           {"exc": [("wrong type", "'e'", lambda: "e")], "what": [("wrong type", "3", lambda: 3)]}))

    # ----- pretrained
    A(Call("pretrained", "add", pretrained.add,
           lambda: dict(folder=fresh_dir(), entry=STRAY_ENTRY, model=mlp(), record={"steps": 1}),
           {"folder": folder_bad(fx, must_exist=False)[:3], "entry": choice_bad()[1:] + [
               ("out of domain", "'../x'", lambda: "../x"), ("out of domain", "'a b'", lambda: "a b")],
            "model": [("wrong type", "'m'", lambda: "m")], "record": [("wrong type", "'r'", lambda: "r")],
            "half": "bool"}))
    A(Call("pretrained", "load", pretrained.load, lambda: dict(folder="straight_flows_moons"),
           {"folder": folder_bad(fx) + [("out of domain", "'no_such_asset'", lambda: "no_such_asset")],
            "entries": [("out of domain", "['nope']", lambda: ["nope"]), ("wrong type", "3", lambda: 3),
                        ("empty", "[]", lambda: [])]},
           extra=[("damaged file", "a folder with a truncated entry",
                   lambda: {"folder": str(Path(fx.damaged("net_truncated_weights")).parent / "pre_trunc")},
                   ("model.safetensors", "pre_trunc"))]))
    A(Call("pretrained", "start", pretrained.start,
           lambda: dict(model=mlp(), folder="straight_flows_moons", entry=None, steps=3, pretrain_steps=5),
           {"steps": "posint", "pretrain_steps": "nonnegint", "model": [("wrong type", "'m'", lambda: "m")],
            "entry": [("wrong type", "3", lambda: 3), ("empty", "''", lambda: "")]}))
    A(Call("pretrained", "history", pretrained.history, lambda: dict(start=None, result=trainer_config.FitResult(
        [1.0], 0.1)), {"start": [("wrong type", "'s'", lambda: "s")], "result": [("wrong type", "'r'", lambda: "r")]}))

    # ----- compare
    A(Call("compare", "recipe", compare.recipe, lambda: dict(method="OT-CFM"),
           {"method": "choice", "sigma": "nonneg", "sb_sigma": "pos"}))
    A(Call("compare", "train_methods", compare.train_methods,
           lambda: dict(make_model=lambda: mlp(), source=lambda n, g: torch.randn(n, 2, generator=g), data=T(16, 2),
                        methods=["I-CFM"], steps=1, batch_size=4, progress=False),
           {"make_model": "callable", "steps": "posint", "batch_size": "posint", "seed": "seed",
            "methods": [("empty", "[]", lambda: []), ("out of domain", "['nope']", lambda: ["nope"]),
                        ("wrong type", "'I-CFM'", lambda: "I-CFM"),
                        ("contradictory", "['I-CFM', 'I-CFM']", lambda: ["I-CFM", "I-CFM"])],
            "reflow_pairs": "posint", "data": tensor((16, 2))[:6]},
           extra=[("contradictory", "'learned' without an interpolant", lambda: {"methods": ["learned"]},
                   ("interpolant",)),
                  ]))
    A(Call("compare", "evaluate", compare.evaluate, lambda: dict(model=mlp(), z=P(), target=P() + 1, steps=(1, 2)),
           {"model": "callable", "z": tensor((6, 2)), "target": tensor((6, 2), [(6, 3)]),
            "steps": [("empty", "()", lambda: ()), ("out of domain", "(0,)", lambda: (0,)),
                      ("wrong type", "('a',)", lambda: ("a",)), ("wrong type", "(1.5,)", lambda: (1.5,)),
                      ("complex/bool", "(True,)", lambda: (True,))],
            "dopri5": "bool", "trajectory": "bool"}))
    A(Call("compare", "save_pretrained", compare.save_pretrained,
           lambda: dict(folder=fresh_dir(), models={"I-CFM": mlp()}, seconds={"I-CFM": 1.0}, record={}),
           {"folder": folder_bad(fx, must_exist=False)[:3],
            "models": [("wrong type", "'m'", lambda: "m"), ("empty", "{}", lambda: {})],
            "seconds": [("NaN/inf", "{'I-CFM': nan}", lambda: {"I-CFM": NAN}),
                        ("out of domain", "{'I-CFM': -1}", lambda: {"I-CFM": -1.0}),
                        ("wrong type", "'s'", lambda: "s")],
            "record": [("wrong type", "'r'", lambda: "r")]},
           extra=[("contradictory", "seconds for another method", lambda: {"seconds": {"OT-CFM": 1.0}},
                   ("seconds", "I-CFM", "OT-CFM"))]))
    A(Call("compare", "load_pretrained", compare.load_pretrained, lambda: dict(task="moons"),
           {"task": "choice", "root": folder_bad(fx), "name": choice_bad()[:3]}))

    # ----- batches
    def files_method(meth):
        def run(**kw):
            out = getattr(files(), meth)(**kw)
            return list(out) if meth == "chunks" else out
        return run

    def first_batch(**kw):   # build the batch function and draw its first batch
        b = batches.CFMBatches(**kw)
        try:
            return b(0, torch.Generator().manual_seed(0))
        finally:
            b.close()

    A(Call("batches", "CFMBatches (and its first batch)", first_batch,
           lambda: dict(path=lin(), sources=[T(16, 2)], targets=[T(16, 2)], batch_size=4),
           {"path": [("wrong type", "'linear'", lambda: "linear")], "batch_size": "posint", "coupling": "choice",
            "prefetch": "nonnegint", "seed": "seed", "paired": "bool", "sampling": "choice",
            "label_dropout": "prob",
            "sources": [("empty", "[]", lambda: []), ("wrong type", "'abc'", lambda: "abc"),
                        ("NaN/inf", "[tensor with NaN]", lambda: [_with(0, (16, 2), NAN)()]),
                        ("wrong shape", "[tensor of dim 3]", lambda: [T(16, 3)])]},
           extra=[("contradictory", "2 sources for 1 target", lambda: {"sources": [T(16, 2), T(16, 2)]},
                   ("sources", "targets")),
                  ("contradictory", "label_dropout without null_label",
                   lambda: {"labels": [torch.zeros(16, dtype=torch.long)], "label_dropout": 0.2}, ("null_label",)),
                  ("contradictory", "null_label 0 among the labels",
                   lambda: {"labels": [torch.zeros(16, dtype=torch.long)], "label_dropout": 0.2, "null_label": 0},
                   ("null_label",))]))

    # ----- devices and runtime
    A(Call("devices", "resolve_precision", devices.resolve_precision, lambda: dict(precision="fp32", device="cpu"),
           {"precision": "choice", "device": "device"}))
    def autocast(**kw):
        with devices.autocast(**kw):
            return 1

    A(Call("devices", "autocast (entered)", autocast, lambda: dict(precision="fp32", device="cpu"),
           {"precision": "choice", "device": "device"}))
    A(Call("devices", "measure_step", devices.measure_step,
           lambda: dict(model=mlp(), batch_fn=lambda i: {"x": T(4, 2)}, loss_fn=lambda m, x: m(x, 0.5).pow(2).mean(),
                        repeats=1, warmup=0),
           {"model": [("wrong type", "'m'", lambda: "m")], "batch_fn": "callable", "loss_fn": "callable",
            "repeats": "posint", "warmup": "nonnegint", "precision": "choice", "device": "device"}))
    A(Call("runtime", "seed_everything", runtime.seed_everything, lambda: dict(seed=1), {"seed": "seed"}))
    A(Call("runtime", "get_device", runtime.get_device, lambda: dict(prefer="cpu"),
           {"prefer": [("out of domain", "'gpu9'", lambda: "gpu9"), ("wrong type", "3", lambda: 3),
                       ("empty", "''", lambda: "")]}))
    A(Call("runtime", "mode", runtime.mode, lambda: dict(supported=("quick", "full")),
           {"supported": [("wrong type", "'quick'", lambda: "quick"),
                          ("out of domain", "('fast',)", lambda: ("fast",)), ("empty", "()", lambda: ())]}))
    for var, fn, bad in (("LFM_MODE", runtime.mode, ["fast", "QUICK!", "1"]),
                         ("LFM_SEED", runtime.seed, ["abc", "-1", "1.5", "nan", "99999999999999999999999"]),
                         ("LFM_PROGRESS", runtime.show_progress, ["maybe", "2"])):
        A(Call("runtime", f"{fn.__name__} with ${var}", fn, lambda: {},
               extra=[("out of domain", f"${var}={b!r}", (lambda var=var, b=b: {"__env__": (var, b)}), (var,))
                      for b in bad]))

    # ----- hub (arguments only; timings on broken networks are measured apart)
    A(Call("hub", "check_repo_id", hub.check_repo_id, lambda: dict(value="madebyollin/taesd"),
           {"value": choice_bad()[1:] + [("out of domain", "'../..'", lambda: "../.."),
                                         ("out of domain", "'a/b/c'", lambda: "a/b/c"),
                                         ("out of domain", "'-/-'", lambda: "-/-"),
                                         ("out of domain", "'a b/c'", lambda: "a b/c")]},
           names={"value": ("repo_id",)}))
    A(Call("hub", "probe", hub.probe, lambda: dict(host="localhost", deadline=0.5),
           {"host": [("empty", "''", lambda: ""), ("wrong type", "3", lambda: 3),
                     ("out of domain", "'http://x/'", lambda: "http://x/")],
            "deadline": float_bad(0.0, strict=True)}))
    A(Call("hub", "require (nothing listens on the host)", _returning(hub.HubUnavailable, hub.require),
           lambda: dict(what="x", host="localhost", deadline=0.5),
           {"what": [("wrong type", "3", lambda: 3)], "deadline": float_bad(0.0, strict=True)[:4]}))
    A(Call("hub", "cached_snapshot", hub.cached_snapshot, lambda: dict(repo_id="madebyollin/taesd"),
           {"repo_id": choice_bad()[1:] + [("out of domain", "'../..'", lambda: "../..")],
            "repo_type": choice_bad(), "patterns": [("wrong type", "'config.json'", lambda: "config.json"),
                                                    ("wrong type", "3", lambda: 3)]}))

    # ----- images, image files, celeba
    A(Call("images", "load", images.load, lambda: dict(name="digits", limit=8, size=8),
           {"name": "choice", "size": "posint", "limit": "posint",
            "split": [("contradictory", "'train' for an offline set", lambda: "train")],
            "root": [("contradictory", "a root for digits", fx.new_empty_dir)],
            "repo": [("contradictory", "a repo for digits", lambda: "a/b")]}))
    A(Call("images", "load (fashion_mnist)", images.load, lambda: dict(name="fashion_mnist", root=fx.fashion),
           {}, extra=[("bad path", "root ''", lambda: {"root": ""}, ("root",)),
                      ("bad path", "root a file", lambda: {"root": fx.new_file()}, ("root",)),
                      ("bad path", "root missing", lambda: {"root": fx.new_missing()}, ("root",)),
                      ("bad path", "root an empty folder", lambda: {"root": fx.new_empty_dir()}, ("root", "fashion")),
                      ("damaged file", "IDX files truncated", lambda: {"root": fx.damaged("idx")}, ("idx", "IDX"))]))
    A(Call("images", "load (celeba_hq folder)", images.load, lambda: dict(name="celeba_hq", root=fx.stargan, size=8),
           {"size": "posint", "limit": "posint", "split": choice_bad()[:3],
            "root": folder_bad(fx) + [("bad path", "an empty folder", fx.new_empty_dir)],
            "repo": [("wrong type", "3", lambda: 3), ("out of domain", "'../..'", lambda: "../..")]},
           extra=[("damaged file", name, (lambda name=name: {"root": fx.damaged(name)}),
                   ("bad", "train-00000.parquet"))
                  for name in ("jpeg_truncated", "jpeg_empty", "jpeg_flipped", "png_bomb", "parquet_truncated",
                               "parquet_empty", "parquet_flipped", "parquet_null_label", "parquet_string_label",
                               "parquet_label_7", "parquet_bad_image")]
           + [("bad path", "$LFM_CELEBA_HQ_DIR a file", lambda: {"root": None, "__env__": ("LFM_CELEBA_HQ_DIR",
                                                                                          fx.new_file())},
               ("LFM_CELEBA_HQ_DIR",)),
              ("bad path", "$LFM_CELEBA_HQ_DIR missing", lambda: {"root": None, "__env__": ("LFM_CELEBA_HQ_DIR",
                                                                                           fx.new_missing())},
               ("LFM_CELEBA_HQ_DIR",))]))
    A(Call("images", "load (celeba_hq parquet)", images.load, lambda: dict(name="celeba_hq", root=fx.parquet, size=8),
           {"limit": "posint"}))
    A(Call("images", "stream", images.stream, lambda: dict(name="celeba_hq", root=fx.stargan, size=8),
           {"name": "choice", "size": "posint", "limit": "posint", "workers": "posint"}))
    A(Call("images", "ImageData.split", _method(dig, "split"), lambda: dict(n_heldout=2),
           {"n_heldout": int_bad()[:6] + [("out of domain", "8 of 8 images", lambda: 8),
                                          ("out of domain", "100 of 8", lambda: 100)],
            "generator": "generator"}))
    A(Call("images", "ImageData.get", _method(dig, "get"), lambda: dict(indices=[0, 1]),
           {"indices": [("out of domain", "[8] of 8", lambda: [8]), ("wrong type", "['a']", lambda: ["a"]),
                        ("wrong type", "[0.5]", lambda: [0.5])]},
           ambiguous=[("empty", "[]", lambda: {"indices": []}, "an empty selection may be an empty batch")]))
    A(Call("images", "ImageData.chunks", lambda n: list(dig().chunks(n)), lambda: dict(n=4), {"n": "posint"}))
    A(Call("images", "save_image_grid", images.save_image_grid,
           lambda: dict(images=img(), path=str(Path(fresh_dir()).parent / "g.png")),
           {"images": tensor((2, 1, 8, 8), [(2, 8, 8), (2, 2, 8, 8)]), "nrow": "posint",
            "path": [("bad path", "''", lambda: ""), ("bad path", "a folder", fx.new_empty_dir),
                     ("wrong type", "3", lambda: 3)]},
           ambiguous=[("bad path", "a path in a missing folder", lambda: {"path": fx.new_missing() + "/sub/g.png"},
                       "making the folders is a correct result too")]))
    A(Call("image_files", "ImageFiles.get", _method(files, "get"), lambda: dict(indices=[0, 1]),
           {"indices": [("out of domain", "[4] of 4", lambda: [4]), ("wrong type", "['a']", lambda: ["a"]),
                        ("empty", "[]", lambda: [])]}))
    for meth, arg, bad in (("chunks", "n", "posint"), ("head", "n", "posint"), ("load", "limit", "posint"),
                           ("spread", "n", int_bad()[1:6]), ("subset", "indices",
                                                             [("out of domain", "[9]", lambda: [9]),
                                                              ("empty", "[]", lambda: []),
                                                              ("wrong type", "'a'", lambda: "a")])):
        A(Call("image_files", f"ImageFiles.{meth}", files_method(meth),
               lambda arg=arg: {arg: 2 if arg != "indices" else [0]},
               {arg: bad}))
    jpg = lambda: (Path(fx.stargan) / "train" / "male" / "0.jpg").read_bytes()   # noqa: E731
    A(Call("image_files", "decode_image", image_files.decode_image, lambda: dict(data=jpg(), size=8, name="x.jpg"),
           {"size": "posint", "data": [("empty", "b''", lambda: b""), ("wrong type", "'abc'", lambda: "abc"),
                                       ("damaged file", "truncated JPEG bytes", lambda: jpg()[:100])]},
           names={"data": ("x.jpg",)}))
    A(Call("image_files", "resize", image_files.resize, lambda: dict(images=img(), size=4),
           {"size": "posint", "images": tensor((2, 1, 8, 8), [(1, 8, 8)])}))
    A(Call("image_files", "check_folder", image_files.check_folder, lambda: dict(value=fx.root, name="root"),
           {"value": folder_bad(fx)[::2]}, names={"value": ("root",)}))   # it checks the type and '' only
    A(Call("celeba", "celeba_hq_files", celeba.celeba_hq_files, lambda: dict(root=fx.stargan, size=8, workers=1),
           {"size": "posint", "split": choice_bad()[:3], "workers": "posint", "root": folder_bad(fx)}))
    A(Call("celeba", "load_celebamask_hq", celeba.load_celebamask_hq, lambda: dict(root=fx.mask_hq, size=8),
           {}, extra=[("bad path", "root missing", lambda: {"root": fx.new_missing()}, ("root",)),
                      ("bad path", "root ''", lambda: {"root": ""}, ("root",)),
                      ("bad path", "root a file", lambda: {"root": fx.new_file()}, ("root",)),
                      ("bad path", "root an empty folder", lambda: {"root": fx.new_empty_dir()},
                       ("root", "CelebA-HQ-img")),
                      ("damaged file", "a truncated 0.jpg", lambda: {"root": fx.damaged("maskhq_truncated")},
                       ("0.jpg",)),
                      ("out of domain", "size 0", lambda: {"root": fx.mask_hq, "size": 0}, ("size",)),
                      ("out of domain", "limit 0", lambda: {"root": fx.mask_hq, "limit": 0}, ("limit",)),
                      ("out of domain", "start -1", lambda: {"root": fx.mask_hq, "start": -1}, ("start",))]))

    # ----- autoencoders and the latent cache
    A(Call("autoencoders", "offline_config", autoencoders.offline_config, lambda: dict(),
           {"in_channels": "posint", "latent_channels": "posint",
            "channels": [("empty", "()", lambda: ()), ("out of domain", "(15, 32)", lambda: (15, 32)),
                         ("wrong type", "'16'", lambda: "16"), ("out of domain", "(0, 16)", lambda: (0, 16))]}))
    A(Call("autoencoders", "load", autoencoders.load, lambda: dict(name_or_path="offline-digits"),
           {"name_or_path": [("empty", "''", lambda: ""), ("wrong type", "3", lambda: 3),
                             ("bad path", "missing folder", fx.new_missing),
                             ("bad path", "a file", fx.new_file),
                             ("bad path", "an empty folder", fx.new_empty_dir),
                             ("damaged file", "a broken config.json", lambda: fx.damaged("ae_broken_config"))],
            "device": "device", "dtype": "dtype", "scale": "pos"},
           names={"name_or_path": ("name_or_path", "config.json", "a_file", "no_such_folder", "empty_dir")}))
    A(Call("autoencoders", "LatentAutoencoder.encode", _method(ae, "encode"), lambda: dict(images=img()),
           {"images": tensor((2, 1, 8, 8), [(2, 3, 8, 8), (1, 8, 8)]), "batch_size": "posint", "sample": "bool",
            "generator": "generator"}))
    A(Call("autoencoders", "LatentAutoencoder.decode", _method(ae, "decode"), lambda: dict(latents=T(2, 4, 2, 2)),
           {"latents": tensor((2, 4, 2, 2), [(2, 3, 2, 2)]), "batch_size": "posint"}))
    A(Call("autoencoders", "LatentAutoencoder", autoencoders.LatentAutoencoder,
           lambda: dict(model=ae().model, scale=1.0, name="x"),
           {"model": [("wrong type", "'m'", lambda: "m")], "scale": "pos", "name": [("wrong type", "3", lambda: 3)]}))
    A(Call("autoencoders", "fit_autoencoder", autoencoders.fit_autoencoder,
           lambda: dict(model=ae().model, images=img(), steps=1, batch_size=2, progress=False),
           {"steps": "posint", "batch_size": "posint", "lr": "pos", "kl_weight": "nonneg", "seed": "seed",
            "flip": "bool", "images": tensor((2, 1, 8, 8), [(2, 3, 8, 8)])}))
    A(Call("autoencoders", "write_standin", autoencoders.write_standin, lambda: dict(folder=fresh_dir()),
           {}, extra=[("bad path", "folder a file", lambda: {"folder": fx.new_file()}, ("folder", "a_file")),
                      ("bad path", "folder ''", lambda: {"folder": ""}, ("folder",)),
                      ("out of domain", "seed -1", lambda: {"folder": fresh_dir(), "seed": -1}, ("seed",))]))
    A(Call("latent_cache", "cached_latents", latent_cache.cached_latents,
           lambda: dict(autoencoder=ae(), data=dig(), cache_dir=fresh_dir()),
           {"autoencoder": [("wrong type", "'offline'", lambda: "offline")],
            "data": [("wrong type", "a tensor", lambda: img())], "cache_dir": folder_bad(fx, must_exist=False)[:3],
            "batch_size": "posint", "read_only": "bool", "overwrite": "bool"},
           extra=[("contradictory", "read_only and overwrite", lambda: {"read_only": True, "overwrite": True},
                   ("read_only", "overwrite")),
                  ("contradictory", "read_only with no entry", lambda: {"read_only": True}, ("read_only",
                                                                                            "cache_dir")),
                  ("contradictory", "3-channel images for a 1-channel autoencoder",
                   lambda: {"data": images.ImageData(torch.rand(2, 3, 8, 8) * 2 - 1, None, "x", "x", None)},
                   ("channel", "data"))],
           ambiguous=[("damaged file", "a damaged cache entry, read_only=False", lambda: {"cache_dir": damaged_cache()},
                       "encoding again (with a warning) is a correct result too")]))
    return out


def build_cases(fx: Fixtures, only=None) -> list:
    """Every case (baselines first for each call), numbered in a fixed order."""
    out = []
    for call in calls(fx):
        if only and call.module not in only:
            continue
        def names(arg, call=call):
            return call.names.get(arg, (arg,))
        out.append(Case(0, call.module, call.label, "", "baseline", "valid arguments", (), _runner(call, {}),
                        baseline=True))
        for arg, bad in call.args.items():
            for kind, desc, make in (BAD[bad]() if isinstance(bad, str) else bad):
                out.append(Case(0, call.module, call.label, arg, kind, desc,
                                names(arg) + (PATH_WORDS if kind in ("bad path", "damaged file") else ()),
                                _runner(call, {arg: make})))
        for kind, desc, changes, words in call.extra:
            out.append(Case(0, call.module, call.label, "+".join(words[:2]), kind, desc, tuple(words),
                            _runner(call, None, changes)))
        for kind, desc, changes, why in call.ambiguous:
            out.append(Case(0, call.module, call.label, "", kind, desc, (), _runner(call, None, changes), why))
    for i, c in enumerate(out):
        c.index = i
    return out


def _runner(call: Call, makers: dict | None, changes=None):
    def run():
        kw = call.valid()
        if makers:
            kw.update({k: m() for k, m in makers.items()})
        env = None
        if changes is not None:
            ch = changes()
            env = ch.pop("__env__", None)
            kw.update(ch)
        if env is not None:
            old = os.environ.get(env[0])
            os.environ[env[0]] = env[1]
        try:
            return call.fn(**kw)
        finally:
            if env is not None:
                if old is None:
                    os.environ.pop(env[0], None)
                else:
                    os.environ[env[0]] = old
    return run


# ------------------------------------------------------------------------------------------ classification
def documented_errors():
    """The error types a clear refusal may have: ValueError, TypeError and lfm_core's own exception classes."""
    import inspect

    import lfm_core

    own = set()
    for name in lfm_core.__all__:
        mod = getattr(lfm_core, name)
        for obj in vars(mod).values():
            if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__.startswith("lfm_core"):
                own.add(obj)
    # FloatingPointError: solvers' documented error for a non-finite velocity (NonFiniteError is one too)
    return (ValueError, TypeError, FloatingPointError, *sorted(own, key=lambda c: c.__name__))


def classify(case: Case, exc: BaseException | None, errors) -> tuple[str, str]:
    if exc is None:
        return ("ok" if case.baseline else "silent"), ""
    text = f"{type(exc).__name__}: {exc}"
    allowed = errors + ((OSError,) if case.kind in ("bad path", "damaged file") else ())
    if case.baseline:
        return "baseline failed", text
    if not isinstance(exc, allowed):
        return "unclear", text
    message = str(exc).lower()
    return ("clear" if any(w.lower() in message for w in case.names) else "vague"), text


def worker(fixtures: str, start: int, only) -> int:
    """Run the cases from ``start`` on, printing ``START i`` before and a JSON line after each."""
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    os.environ.setdefault("LFM_PROGRESS", "0")
    fx = Fixtures(Path(fixtures))
    cases = build_cases(fx, only)
    errors = documented_errors()
    for case in cases[start:]:
        print(f"START {case.index}", flush=True)
        t0 = time.perf_counter()
        exc = None
        try:
            result = case.run()
            close = getattr(result, "close", None)
            if callable(close) and not isinstance(result, torch.nn.Module):
                with contextlib.suppress(Exception):
                    close()
        except BaseException as e:   # noqa: BLE001  (every outcome is recorded)
            if isinstance(e, KeyboardInterrupt):
                raise
            exc = e
        outcome, message = classify(case, exc, errors)
        where = ""
        if exc is not None and outcome == "unclear":
            tb = traceback.extract_tb(exc.__traceback__)
            where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        keep = 100 if outcome in ("clear", "ok") else 400
        print("RESULT " + json.dumps({"index": case.index, "outcome": outcome, "message": message[:keep],
                                      "where": where, "seconds": round(time.perf_counter() - t0, 3)}), flush=True)
    print("DONE", flush=True)
    return 0


def run_cases(fixtures: str, n: int, deadline: float, only) -> dict:
    """Run cases 0..n-1 in worker processes; a case past ``deadline`` is a hang, a dead worker a crash."""
    results, start = {}, 0
    env = dict(os.environ, OMP_NUM_THREADS="1", LFM_PROGRESS="0")
    while start < n:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", fixtures, str(start)]
        if only:
            cmd += ["--modules", *only]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                cwd=fixtures)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        current, since = None, time.monotonic()
        buffer = ""
        while True:
            limit = deadline if current is not None else 120.0   # the import of torch etc. before the first case
            ready = sel.select(timeout=max(0.0, limit - (time.monotonic() - since)))
            if not ready:
                proc.kill()
                proc.wait()
                if current is None:
                    raise RuntimeError("the worker did not start a case within 120 s")
                results[current] = {"index": current, "outcome": "hang", "message": f"still running after "
                                    f"{deadline:.0f} s", "where": "", "seconds": deadline}
                start = current + 1
                break
            chunk = os.read(proc.stdout.fileno(), 65536).decode()
            if not chunk:   # the worker died
                code = proc.wait()
                if current is not None:
                    results[current] = {"index": current, "outcome": "crash",
                                        "message": f"the process ended with code {code}", "where": "",
                                        "seconds": round(time.monotonic() - since, 3)}
                    start = current + 1
                else:
                    start = n if code == 0 else start
                    if code != 0:
                        raise RuntimeError(f"the worker ended with code {code} before any case")
                break
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            for line in lines:
                if line.startswith("START "):
                    current, since = int(line.split()[1]), time.monotonic()
                elif line.startswith("RESULT "):
                    r = json.loads(line[7:])
                    results[r["index"]] = r
                    current = None
                    since = time.monotonic()
                    start = r["index"] + 1
                elif line == "DONE":
                    start = n
        sel.close()
        proc.stdout.close()
        if proc.poll() is None:
            proc.wait()
        common.log(f"  {len(results)}/{n} cases")
    return results


# ------------------------------------------------------------------------------------------ hub timings
HUB_PATHS = {   # label: (imports, done before the clock starts; the call)
    "autoencoders.load('stabilityai/sd-vae-ft-mse')": ("from lfm_core import autoencoders",
                                                       "autoencoders.load('stabilityai/sd-vae-ft-mse')"),
    "autoencoders.load('madebyollin/taesd')": ("from lfm_core import autoencoders",
                                               "autoencoders.load('madebyollin/taesd')"),
    "images.load('celeba_hq')": ("from lfm_core import images", "images.load('celeba_hq', limit=2)"),
    "images.stream('celeba_hq')": ("from lfm_core import images", "images.stream('celeba_hq', limit=2)"),
    "metrics.fid_status()": ("from lfm_core import metrics", "print('RESULT', metrics.fid_status())"),
    "metrics.fid_status() (torch-fidelity taken as installed)": (
        "import importlib.util, importlib.machinery\n_find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: (importlib.machinery.ModuleSpec(name, None) if name == "
        "'torch_fidelity' else _find(name, *a))\nfrom lfm_core import metrics",
        "print('RESULT', metrics.fid_status())"),
    "hub.require('a download')": ("from lfm_core import hub", "hub.require('a download')"),
}
CELEBA_NOTE = ("images.load/stream('celeba_hq') pass the deadline by about 0.35 s: celeba._download_celeba_hq imports "
               "huggingface_hub (about 0.3 s here) before it calls hub.require.")
HUB_LIMIT = 5.1   # the 5 s deadline of lfm_core.hub, with 0.1 s for the bookkeeping around the probe
HANG_DNS = ("import socket, time\n_orig = socket.getaddrinfo\n"
            "def _slow(*a, **k):\n    time.sleep(30)\n    return _orig(*a, **k)\nsocket.getaddrinfo = _slow\n")


class SilentProxy:
    """A TCP server on localhost that accepts connections and never answers."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.conns, self.stop = [], False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self

    def _accept(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc):
        self.stop = True
        self.sock.close()
        for c in self.conns:
            c.close()


def hub_timings(work: Path) -> list:
    rows = []
    base = {k: v for k, v in os.environ.items() if k.upper() not in (
        "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "HF_HUB_OFFLINE", "LFM_CELEBA_HQ_DIR", "HF_HOME",
        "TORCH_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "TRANSFORMERS_OFFLINE")}
    with SilentProxy() as proxy:
        for network in ("silent proxy", "hanging DNS"):
            for label, code in HUB_PATHS.items():
                home = Path(tempfile.mkdtemp(dir=work))
                env = dict(base, HF_HOME=str(home / "hf"), TORCH_HOME=str(home / "torch"),
                           XDG_CACHE_HOME=str(home / "cache"), OMP_NUM_THREADS="1")
                prelude = ""
                if network == "silent proxy":
                    env.update(HTTPS_PROXY=proxy.url, https_proxy=proxy.url, HTTP_PROXY=proxy.url,
                               http_proxy=proxy.url)
                else:
                    prelude = HANG_DNS
                script = (prelude + f"import time\n{code[0]}\nt0 = time.perf_counter()\ntry:\n    {code[1]}\n" +
                          "    outcome = 'returned'\nexcept BaseException as e:\n"
                          "    outcome = f'{type(e).__name__}: {e}'\n"
                          "print('CALL', round(time.perf_counter() - t0, 2))\nprint('OUTCOME', outcome[:300])\n")
                t0 = time.perf_counter()
                try:
                    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                                       timeout=90, cwd=home)
                    out = p.stdout
                except subprocess.TimeoutExpired:
                    out = ""
                wall = time.perf_counter() - t0
                call = next((float(s.split()[1]) for s in out.splitlines() if s.startswith("CALL ")), None)
                outcome = next((s[8:] for s in out.splitlines() if s.startswith("OUTCOME ")), "timed out after 90 s")
                result = next((s[7:] for s in out.splitlines() if s.startswith("RESULT ")), "")
                rows.append({"network": network, "path": label, "call_seconds": call, "process_seconds": round(wall, 2),
                             "outcome": (result + " " if result else "") + outcome,
                             "within_5s": call is not None and call <= HUB_LIMIT})
                common.log(f"  {network:13s} {label:50s} {call} s  {outcome[:90]}")
    return rows


# ------------------------------------------------------------------------------------------ report
def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


COLUMNS = ["module", "call", "arg", "kind", "value", "baseline", "ambiguous", "outcome", "message", "where", "seconds"]


def cases_of(data: dict) -> list:
    """The cases of a run's JSON as dicts (the file holds each as a list of the values of its ``columns``)."""
    return [dict(zip(data["columns"], r, strict=True)) if isinstance(r, list) else r for r in data["rows"]]


def report(data: dict) -> list:
    data = {**data, "rows": cases_of(data)}
    broken = {(r["module"], r["call"]) for r in data["rows"] if r["baseline"] and r["outcome"] != "ok"}
    rows = [r for r in data["rows"] if not r["baseline"] and not r["ambiguous"] and (r["module"], r["call"]) not in
            broken]
    counts = defaultdict(Counter)
    for r in rows:
        counts[r["kind"]][r["outcome"]] += 1
    total = Counter(r["outcome"] for r in rows)
    n = len(rows)
    lines = ["# Input audit: lfm_core's public API on bad inputs", "", data["produced_by"], "",
             f"{n} bad inputs over {len({(r['module'], r['call']) for r in rows})} calls of "
             f"{len({r['module'] for r in rows})} modules; deadline {data['deadline']:.0f} s per case, each case in a "
             "worker process (a hang kills it and a new one goes on). Clear: a ValueError/TypeError or a documented "
             "error of lfm_core (FileNotFoundError and other OSErrors for paths and files) whose message names the "
             "argument or file (a message that quotes the bad value but not the argument's name is vague); vague: the "
             "same without the name; unclear: another exception; silent: a result. A call's cases count only where "
             "the call runs with its valid arguments (its baseline).",
             "", "| kind | " + " | ".join(OUTCOMES) + " | total | clear % |",
             "|---|" + "---:|" * (len(OUTCOMES) + 2)]
    for kind in KINDS + sorted(set(counts) - set(KINDS)):
        if kind in counts:
            c = counts[kind]
            tot = sum(c.values())
            lines.append(f"| {kind} | " + " | ".join(str(c[o]) for o in OUTCOMES)
                         + f" | {tot} | {100 * c['clear'] / tot:.1f} |")
    lines.append("| **all** | " + " | ".join(f"**{total[o]}**" for o in OUTCOMES)
                 + f" | **{n}** | **{100 * total['clear'] / max(n, 1):.1f}** |")
    failed = [r for r in data["rows"] if r["baseline"] and r["outcome"] != "ok"]
    lines += ["", f"Baselines (each call with valid arguments): {sum(r['baseline'] for r in data['rows'])} run, "
              f"{len(failed)} failed" + (" (their cases are left out of the counts):" if failed else ".")]
    lines += [f"- `{r['module']}.{r['call']}`: {_cell(r['message'])}" for r in failed]
    if data.get("hub"):
        lines += ["", "## Hub paths on broken networks", "",
                  "Each in a fresh process, empty HF_HOME and TORCH_HOME, no LFM_CELEBA_HQ_DIR; the call's own time "
                  "(process start and imports apart) must be within the 5 s deadline (here: <= 5.1 s).", "",
                  "| network | call | seconds (call) | seconds (process) | within 5 s | outcome |",
                  "|---|---|---:|---:|---|---|"]
        for h in data["hub"]:
            lines.append(f"| {h['network']} | `{h['path']}` | {h['call_seconds']} | {h['process_seconds']} | "
                         f"{'yes' if h['within_5s'] else '**no**'} | {_cell(h['outcome'][:200])} |")
    if data.get("notes"):
        lines += ["", "Notes:", *[f"- {n}" for n in data["notes"]]]
    lines += ["", "## Every case that is not clear", "", "| outcome | kind | call | argument | input | message |",
              "|---|---|---|---|---|---|"]
    order = {o: i for i, o in enumerate(OUTCOMES)}
    for r in sorted((r for r in rows if r["outcome"] != "clear"), key=lambda r: (order[r["outcome"]], r["module"],
                                                                                   r["call"])):
        where = f" ({r['where']})" if r.get("where") else ""
        lines.append(f"| {r['outcome']} | {r['kind']} | `{r['module']}.{r['call']}` | {r['arg']} | "
                     f"{_cell(r['value'])} | {_cell(r['message'][:300])}{where} |")
    amb = [r for r in data["rows"] if r["ambiguous"]]
    if amb:
        lines += ["", "## Ambiguous cases (not counted)", "", "| call | input | why ambiguous | outcome | message |",
                  "|---|---|---|---|---|"]
        lines += [f"| `{r['module']}.{r['call']}` | {_cell(r['value'])} | {_cell(r['ambiguous'])} | {r['outcome']} | "
                  f"{_cell(r['message'][:200])} |" for r in amb]
    lines += ["", "Not used as bad inputs (valid values): a `t_span` outside [0, 1] or reversed for "
              "`solvers.integrate` (a generic ODE integrator), a seed of 0, `depth=0` for an MLP (a linear map), "
              "integer tensors where a float tensor is converted, `keep_checkpoints`, negative `power` for MeanFlow's "
              "weight, a zero-length `t_span`."]
    return lines


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--deadline", type=common.number(float, above=0), default=10.0,
                   help="seconds a case may run before it counts as a hang (default 10)")
    p.add_argument("--no-hub", action="store_true", help="skip the hub timings on broken networks")
    p.add_argument("--modules", nargs="+", help="only the cases of these lfm_core modules")
    p.add_argument("--worker", nargs=2, metavar=("FIXTURES", "START"), help=argparse_suppress())
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], int(args.worker[1]), args.modules)
    stem = "input_audit_quick" if args.quick else "input_audit"
    if args.report_only:
        data = common.load(args.report_only, p)
        common.save(args.report_only.parent, args.report_only.stem, report(data))
        return 0
    only = args.modules or (list(QUICK_MODULES) if args.quick else None)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="lfm_input_audit_") as tmp:
        fx = Fixtures(Path(tmp)).build()
        cases = build_cases(fx, only)
        common.log(f"{len(cases)} cases ({sum(c.baseline for c in cases)} baselines)")
        try:
            results = run_cases(tmp, len(cases), args.deadline, only)
        finally:   # what a case that was let through wrote into the package's assets
            from lfm_core import pretrained
            stray = Path(pretrained.ASSETS) / STRAY_ENTRY
            wrote_assets = stray.exists()
            shutil.rmtree(stray, ignore_errors=True)
        hub = [] if (args.quick or args.no_hub) else hub_timings(Path(tmp))
    rows = [{"module": c.module, "call": c.call, "arg": c.arg, "kind": c.kind, "value": c.value,
             "baseline": c.baseline, "ambiguous": c.ambiguous, **{k: v for k, v in results[c.index].items()
                                                                 if k != "index"}} for c in cases]
    import torch

    m = common.machine()
    cmd = common.command(__file__, argv)
    data = {"command": cmd, "machine": m, "torch": torch.__version__, "deadline": args.deadline,
            "wall_seconds": round(time.time() - t0, 1), "rows": rows, "hub": hub,
            "notes": ([f"A case let through wrote {Path(pretrained.ASSETS).name}/{STRAY_ENTRY}/ into the package's "
                       "assets (pretrained.add with folder=''); the audit removed it."] if wrote_assets else [])
            + ([CELEBA_NOTE] if any(h["path"].startswith("images.") and not h["within_5s"] for h in hub) else []),
            "produced_by": common.produced_by(cmd, f"{m['host']} ({m['processor']})",
                                              [f"Python {m['python']}", f"torch {torch.__version__}",
                                               "CPU, OMP_NUM_THREADS=1"], (time.time() - t0) / 60)}
    path = common.save(args.out, stem, report(data))
    # the JSON with one case a line, a list of the values of COLUMNS (one key a line would take 0.8 MB)
    rows_text = ",\n".join("  " + json.dumps([r.get(k) for k in COLUMNS]) for r in rows)
    (args.out / f"{stem}.json").write_text(json.dumps({**data, "columns": COLUMNS, "rows": []}, indent=1).replace(
        '"rows": []', '"rows": [\n' + rows_text + "\n ]") + "\n")
    broken = {(r["module"], r["call"]) for r in rows if r["baseline"] and r["outcome"] != "ok"}
    bad = [r for r in rows if not r["baseline"] and not r["ambiguous"] and (r["module"], r["call"]) not in broken]
    c = Counter(r["outcome"] for r in bad)
    common.log(f"{len(bad)} bad inputs: " + ", ".join(f"{c[o]} {o}" for o in OUTCOMES)
               + f" ({100 * c['clear'] / max(len(bad), 1):.1f} % clear); report in {path}")
    return 0


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
