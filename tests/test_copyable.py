"""Each module of lfm_core can be copied into another project: the module and the siblings its docstring's
``Copy with:`` line names, put in an empty package folder, import there and do their job.

This is what "copy one module" means in this project (README, "Reusing a module"): one folder of your
project that is a package (it has an ``__init__.py``), holding the module and the files it lists. A sibling
missing from the list, or a stale one, shows here as an import error in the copied package.
"""

import importlib
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

import lfm_core

PACKAGE = Path(lfm_core.__file__).resolve().parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def copy_with(module: str) -> list[str]:
    """The sibling modules named on the ``Copy with:`` line of ``module``'s docstring."""
    doc = importlib.import_module(f"lfm_core.{module}").__doc__ or ""
    m = re.search(r"Copy with:(.*?)(?:\n\s*\n|\Z)", doc, re.S)
    assert m, f"lfm_core/{module}.py: its docstring needs a 'Copy with:' line"
    names = set(re.findall(r"\b([a-z_]+)\b", m.group(1))) & set(MODULES)
    return sorted(names)


def test_every_module_names_what_it_needs():
    for module in MODULES:
        names = copy_with(module)
        source = (PACKAGE / f"{module}.py").read_text()
        imported = set(re.findall(r"from \.(\w+) import|from \. import ([\w, ]+)", source))
        needed = set()
        for a, b in imported:
            needed |= {a} if a else {n.strip() for n in b.split(",")}
        assert needed <= set(names), f"{module} imports {sorted(needed - set(names))} but does not list them"
        assert "lfm_core" not in re.sub(r'""".*?"""|#.*', "", source, flags=re.S).replace("lfm_core.", ""), module


def _use(module: str, mod, tmp_path: Path):
    """A small use of the copied module ``mod`` that reaches its lazily imported siblings too."""
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    if module == "utils":
        assert mod.as_time(0.5, 3, like=x).shape == (3,)
    elif module == "explore":
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = mod.strip(lambda ax, v: ax.plot([0, v]), [1, 2], name="n")
        assert len(fig.axes) == 2
        plt.close(fig)   # no figure left open for the tests after this one
    elif module == "runtime":
        assert mod.mode() in ("quick", "full", "rehearsal")
    elif module == "hub":
        assert mod.probe("localhost", deadline=0.5) is not None or True
    elif module == "paths":
        xt, ut = mod.LinearPath(0.1).sample(x, x + 1, 0.5)
        assert xt.shape == ut.shape == x.shape
    elif module == "couplings":
        i0, _ = mod.pair_indices(x, x + 1, "ot")
        assert sorted(i0.tolist()) == list(range(16))
    elif module == "mixtures":
        assert mod.GaussianMixture(torch.zeros(1, 2), 1.0).velocity(type("P", (), {
            "schedule": lambda self, t: (1 - t, t, 0 * t, -1 + 0 * t, 1 + 0 * t, 0 * t),
            "validate_time": lambda self, t: None})())(x, 0.5).shape == x.shape
    elif module == "toy":
        assert mod.sample("moons", 10).shape == (10, 2)
    elif module == "nets":
        assert mod.MLP(2)(x, 0.3).shape == x.shape
    elif module == "solvers":
        assert torch.allclose(mod.integrate(lambda z, t: -z, x, steps=10).x, x * 0.9**10)
    elif module == "metrics":
        assert mod.wasserstein2(x, x) == 0.0
    elif module == "training":
        lin = torch.nn.Linear(2, 2)
        res = mod.fit(lin, lambda step, g: lin(x).pow(2).mean(), steps=3, progress=False,
                      out_dir=tmp_path / "ckpt")
        assert len(res.losses) == 3 and (tmp_path / "ckpt" / "latest").exists()
    elif module == "trainer":
        lin = torch.nn.Linear(2, 2)
        cfg = mod.TrainerConfig(steps=3, batch_size=4, sample_every=3)
        tr = mod.Trainer(lin, lambda step, g: {"x": x[:4]}, lambda m, x: m(x).pow(2).mean(), cfg, progress=False,
                         out_dir=tmp_path / "ckpt", sample_fn=lambda m: torch.zeros(1, 1, 4, 4))
        assert len(tr.fit().losses) == 3 and (tmp_path / "ckpt" / "samples" / "step-00000003.png").exists()
    elif module == "trainer_config":
        cfg = mod.TrainerConfig(steps=10, batch_size=4, lr=1.0, lr_schedule="cosine", warmup=2)
        assert cfg.lr_at(0) == 0.5 and cfg.lr_at(10) == 0.0 and mod.FitResult([1.0, 3.0]).smoothed(2) == [1.0, 2.0]
        seen = mod.utils.RunningMedian(mod.DIVERGENCE_WINDOW, [1.0] * mod.DIVERGENCE_WARMUP)
        assert mod.failure(1.0, 1.0, 1.0, 1.0, seen, 1e3) == (None, False)
        assert mod.failure(1e4, 1.0, 1.0, 1.0, seen, 1e3)[1] is True   # a loss 10 000 x the median
    elif module == "checkpoints":
        folder = mod.store.write_folder(tmp_path / "ckpt-1", lambda f: (f / "a.txt").write_text("a"))
        mod.verify_folder(folder, ("a.txt",))
        assert mod.model_config(torch.nn.Linear(2, 2)) == {"_class_name": "Linear"}
    elif module == "devices":
        assert mod.resolve_precision("auto", "cpu") == "fp32" and mod.dist_info() == (0, 1)
        assert mod.measure_step(torch.nn.Linear(2, 2), lambda i: {"x": x}, lambda m, x: m(x).sum(), repeats=1,
                                warmup=0)["ms"] > 0
    elif module == "batches":
        b = mod.CFMBatches(type("P", (), {"sample_time": lambda self, n, generator, dtype: torch.rand(n)})(), [x],
                           [x + 1], 4, coupling="ot", labels=[torch.arange(16) % 2], label_dropout=0.5, null_label=2)
        assert b(0)["x0"].shape == (4, 2) and b(0)["labels"].shape == (4,)
    elif module == "interpolants":
        xt, ut = mod.GlowInterpolant(2, layers=1, hidden=4).sample(x, x + 2, 0.5)
        assert xt.shape == ut.shape == x.shape
        x0, _ = mod.AffineInterpolant(3).invert(xt, x + 2, torch.full((16,), 0.5))
        assert torch.allclose(x0, x, atol=1e-5)
    elif module == "straightness":
        from lfm_core.interpolants import AffineInterpolant  # the interpolant is the caller's

        interp = AffineInterpolant(3)
        res = mod.fit_interpolant(interp, x, x + 2, steps=2, batch_size=4, n_reference=4, progress=False)
        assert len(res.losses) == 2 and mod.optimal_velocity(interp, x + 2)(x, 0.5).shape == x.shape
    elif module == "guidance":
        assert mod.drop_labels(torch.arange(4), 10, p=1.0).tolist() == [10] * 4
    elif module == "conditioning":
        m = mod.rectangle_masks(2, 8)
        assert mod.composite(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8), m).shape == (2, 1, 8, 8)
    elif module == "bounds":
        assert mod.w2_bound(0.1, 1.0, 0.5, 0.01)["sum_form"] > 0.1
    elif module == "images":
        assert mod.load("digits", limit=3).images.shape == (3, 1, 8, 8)
        _tiny_fashion_mnist(tmp_path)
        assert mod.load("fashion_mnist", root=tmp_path, pad=2).images.shape == (5, 1, 32, 32)
    elif module == "image_files":
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, format="PNG")
        files = mod.ImageFiles([("a.png", buf.getvalue)] * 3, torch.tensor([0, 1, 0]), size=8, name="three",
                               source="made here", num_classes=2)
        assert files.load().images.shape == (3, 3, 8, 8) and len(files.content_key()) == 64
    elif module == "celeba":
        from PIL import Image

        for split in ("train", "val"):
            for cls in ("female", "male"):
                (tmp_path / "celeba" / split / cls).mkdir(parents=True)
                Image.new("RGB", (16, 16), (200, 100, 50)).save(tmp_path / "celeba" / split / cls / "0.jpg")
        assert mod.celeba_hq_files(size=8, root=tmp_path / "celeba").load().images.shape == (2, 3, 8, 8)
        streamed = sys.modules[mod.__name__.rsplit(".", 1)[0] + ".images"].stream("celeba_hq", size=8,
                                                                                  root=tmp_path / "celeba")
        assert streamed.labels.tolist() == [0, 1]
    elif module == "autoencoders":
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        model = AutoencoderKL(**mod.offline_config(1, channels=(16, 16)))
        ae = mod.LatentAutoencoder(model, 0.5, "copied")
        pictures = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        assert ae.decode(ae.encode(pictures)).shape == pictures.shape
        assert len(mod.fit_autoencoder(model, pictures, steps=1, batch_size=2, progress=False).losses) == 1
    elif module == "latent_cache":
        from diffusers import AutoencoderKL

        package = mod.__name__.rsplit(".", 1)[0]
        ae_mod, images_mod = (importlib.import_module(f"{package}.{name}") for name in ("autoencoders", "images"))
        torch.manual_seed(0)
        ae = ae_mod.LatentAutoencoder(AutoencoderKL(**ae_mod.offline_config(1, channels=(16, 16))), 0.5, "copied")
        data = images_mod.load("digits", size=8, limit=4)
        z, _ = mod.cached_latents(ae, data, tmp_path / "cache")
        assert z.shape == (4, 4, 4, 4)
        torch.testing.assert_close(mod.cached_latents(ae, data, tmp_path / "cache", read_only=True)[0], z)
    elif module == "compare":
        from lfm_core.nets import MLP  # the network is the caller's; the comparison is what is copied

        models, seconds = mod.train_methods(lambda: MLP(2, 8, 1), x, x + 3, methods=("I-CFM", "2-RF"), steps=2,
                                            batch_size=4, reflow_pairs=8, progress=False)
        assert set(models) == {"I-CFM", "2-RF"}
        assert "W2@1" in mod.evaluate(models["I-CFM"], x, x + 3, steps=(1, 2))
    elif module == "average_velocity":
        from lfm_core.nets import MLP  # the network is the caller's

        model = mod.AverageVelocity(MLP(2, 8, 1, cond_channels=1))
        res = mod.train_meanflow(model, x, x + 3, steps=2, batch_size=4, progress=False)
        assert len(res.losses) == 2 and mod.sample(model, x, steps=2).x.shape == x.shape
    elif module == "pretrained":
        net = torch.nn.Linear(2, 2)
        mod.add(tmp_path / "nets", "a", net, {"steps": 3})
        states, records = mod.load(tmp_path / "nets")
        assert torch.equal(states["a"]["weight"], net.weight.detach()) and records["a"]["steps"] == 3
    elif module == "classifier":
        model = mod.SmallClassifier(1, 2, width=8, dim=4)
        fit = mod.train_classifier(model, torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), steps=2, progress=False)
        assert len(fit["losses"]) == 2 and mod.frechet_distance(torch.randn(5, 4), torch.randn(5, 4)) >= 0
    elif module == "fashion_mnist":
        _tiny_fashion_mnist(tmp_path)
        pictures, labels, source = mod.arrays(tmp_path)
        assert pictures.shape == (5, 28, 28) and labels.tolist() == [0] * 5 and str(tmp_path) in source
    elif module == "exercises":
        assert mod.check(1, "x", lambda: x + 1e-9, x, atol=1e-6) < 1e-6
    elif module == "store":
        net = torch.nn.Linear(2, 2)
        folder = mod.save(tmp_path / "net", net, {"steps": 3}, half=True)
        loaded, record = mod.load(folder, torch.nn.Linear(2, 2))
        assert torch.allclose(loaded.weight, net.weight, atol=1e-3) and record == {"steps": 3}
    else:
        raise AssertionError(f"no small use written for lfm_core.{module}: add one here")



def _tiny_fashion_mnist(folder: Path) -> None:
    """Fashion-MNIST's four IDX files with 3 training and 2 test images, all zero, in ``folder``."""
    import gzip
    import struct

    for prefix, n in (("train", 3), ("t10k", 2)):
        for kind, shape in (("images-idx3", (n, 28, 28)), ("labels-idx1", (n,))):
            head = struct.pack(">BBBB", 0, 0, 0x08, len(shape)) + struct.pack(">" + "I" * len(shape), *shape)
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(head + bytes(math.prod(shape))))

@pytest.mark.parametrize("module", MODULES)
def test_module_works_when_copied_alone(module, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pkg = f"copied_{module}"
    folder = tmp_path / "src" / pkg
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    for name in [module, *copy_with(module)]:  # exactly what the docstring says, nothing more
        shutil.copy(PACKAGE / f"{name}.py", folder / f"{name}.py")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    try:
        mod = importlib.import_module(f"{pkg}.{module}")
        _use(module, mod, tmp_path)
    finally:
        for name in [k for k in sys.modules if k == pkg or k.startswith(pkg + ".")]:
            del sys.modules[name]
