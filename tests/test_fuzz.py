"""A fuzz of the public API: every bad input gets a ValueError or TypeError that names the argument, or a correct
(finite) result; never a deep torch error, a hang, or a silent NaN.

Each entry below is a public call with valid arguments and the kind of each argument; every argument in turn is
replaced by each bad value of its kind. Hypothesis then draws numbers (NaN, infinities, huge and tiny values) for
the numeric arguments of the core functions.
"""

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lfm_core import (
    bounds,
    checkpoints,
    compare,
    conditioning,
    couplings,
    guidance,
    hub,
    images,
    interpolants,
    metrics,
    mixtures,
    nets,
    paths,
    runtime,
    solvers,
    straightness,
    toy,
    trainer,
    training,
)

B, D = 6, 2
NAN, INF = float("nan"), float("inf")


def pts(b=B, d=D, shift=0.0, seed=0):
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed)) + shift


def meta(shape):
    return torch.empty(shape, device="meta")


BAD = {
    "points": [None, "x", 3.0, torch.zeros(0, D), torch.full((B, D), NAN), torch.full((B, D), INF),
               torch.zeros(B, D, dtype=torch.long), meta((B, D)), torch.zeros(B),
               torch.zeros(B, D, dtype=torch.cfloat)],
    "images": [None, "x", torch.zeros(0, 1, 8, 8), torch.full((2, 1, 8, 8), NAN), torch.zeros(2, 8, 8),
               meta((2, 1, 8, 8)), torch.ones(2, 1, 8, 8, dtype=torch.cfloat)],
    "posint": [0, -3, 2.5, "4", None, True],
    "nonneg_int": [-1, 2.5, "4", None, True],
    "pos_float": [0.0, -1.0, NAN, INF, "x", None, True],
    "nonneg_float": [-1.0, NAN, INF, "x", None],
    "prob": [-0.1, 1.5, NAN, "x", None],
    "time": [1.5, -0.1, NAN, INF, "x", None, torch.full((B,), 0.5)[:3], torch.full((B, 1), 0.5)],
    "time<1": [1.0, torch.ones(B), 1.5, -0.1, NAN, "x", None, torch.full((B,), 0.5)[:3]],  # where t = 1 is singular
    "maps": [None, torch.zeros(2, 8, 8), torch.zeros(0, 8, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long),
             torch.full((2, 8, 8), 7), torch.full((2, 8, 8), -1)],
    "methods": [[], (), "I-CFM", None, ["nope"], 3, [3]],
    "name": ["nope", 3, None, ["nope"]],
    "generator": ["g", 3, torch.Generator().manual_seed(0).get_state()],
    "float_dtype": [torch.long, torch.bool, "float32", None],
    "device": ["x", 3.5, "cuda:x", True],
    "callable": [None, 3, "f"],
    "bool": ["yes", 2, None],
    "labels": [None, "x", torch.zeros(B), torch.full((B,), 99), torch.full((B,), -1), torch.zeros(B + 1,
                                                                                                  dtype=torch.long)],
    "seed64": [-1, 2.5, "4", None, True, 2**70],
    "step_list": ["x", 3, None, [-1], [2.5], [True], [None]],
    "out_dir": ["", 3, __file__, __file__ + "/sub"],  # empty, not a path, a file, under a file
}


def mlp():
    torch.manual_seed(0)
    return nets.MLP(D, 8, 1)


def mlp_cond():
    torch.manual_seed(0)
    return nets.MLP(D, 8, 1, cond_channels=D)


def tiny_trainer(**k):
    return trainer.Trainer(mlp(), lambda s, g: {}, lambda m: m.net[0].weight.sum(),
                           trainer.TrainerConfig(steps=1, batch_size=None), **k)


def gmm():
    return mixtures.GaussianMixture(torch.tensor([[2.0, 0.0], [-2.0, 0.0]]), 0.5)


class Labelled(torch.nn.Module):
    num_classes, null_label = 3, 3

    def forward(self, x, t, labels=None, cond=None):
        return x * 0 + labels[:, None].float()


# (name, function, valid keyword arguments, {argument: kind})
API = [
    ("LinearPath", paths.LinearPath, dict(sigma=0.1), {"sigma": "nonneg_float"}),
    ("TargetPath", paths.TargetPath, dict(sigma_min=1e-4), {"sigma_min": "nonneg_float"}),
    ("BridgePath", paths.BridgePath, dict(sigma=1.0, t_min=1e-3), {"sigma": "nonneg_float", "t_min": "pos_float"}),
    ("path.sample", lambda **k: paths.LinearPath(0.1).sample(**k),
     dict(x0=pts(), x1=pts(seed=1), t=0.3, noise=pts(seed=2)),
     {"x0": "points", "x1": "points", "t": "time", "noise": "points"}),
    ("path.sample_time", lambda **k: paths.BridgePath().sample_time(**k), dict(n=4), {"n": "posint"}),
    ("couplings.pair", couplings.pair, dict(x0=pts(), x1=pts(seed=1), method="ot"),
     {"x0": "points", "x1": "points", "method": "name"}),
    ("couplings.pair sinkhorn", couplings.pair, dict(x0=pts(), x1=pts(seed=1), method="sinkhorn", reg=0.5, tol=1e-3),
     {"reg": "pos_float", "tol": "pos_float"}),
    ("couplings.pair options", couplings.pair, dict(x0=pts(), x1=pts(seed=1), method="ot", block_size=3,
                                                    replace=False, labels=torch.arange(B) % 2, generator=None),
     {"block_size": "posint", "replace": "bool", "labels": "labels", "generator": "generator"}),
    ("couplings.sinkhorn", couplings.sinkhorn, dict(cost=torch.rand(4, 4), reg=0.5, max_iter=500),
     {"cost": "points", "reg": "pos_float", "max_iter": "posint"}),
    ("MLP", nets.MLP, dict(dim=2, hidden=4, depth=1, activation="selu"),
     {"dim": "posint", "hidden": "posint", "depth": "posint", "activation": "name"}),
    ("MLP.forward", lambda **k: mlp()(**k), dict(x=pts(), t=torch.rand(B)), {"x": "points", "t": "time"}),
    ("MLP cond", lambda **k: mlp_cond()(**k), dict(x=pts(), t=0.5, cond=pts(seed=4)), {"cond": "points"}),
    ("MLPEnsemble", nets.MLPEnsemble, dict(n_members=2, dim=2), {"n_members": "posint", "dim": "posint"}),
    ("MLPEnsemble.member", lambda **k: nets.MLPEnsemble(2, 2).member(**k), dict(i=1), {"i": "nonneg_int"}),
    ("AffineVelocity.affine_map", lambda **k: nets.AffineVelocity(2).affine_map(**k), dict(t=0.5), {"t": "time"}),
    ("AffineVelocity.lipschitz", lambda **k: nets.AffineVelocity(2).lipschitz(**k), dict(n_times=5),
     {"n_times": "posint"}),
    ("integrate", solvers.integrate, dict(velocity=lambda x, t: -x, x=pts(), method="euler", steps=4),
     {"velocity": "callable", "x": "points", "method": "name", "steps": "posint"}),
    ("integrate flags", solvers.integrate, dict(velocity=lambda x, t: -x, x=pts(), steps=2, return_trajectory=True,
                                                enable_grad=False),
     {"return_trajectory": "bool", "enable_grad": "bool"}),
    ("integrate adaptive", solvers.integrate, dict(velocity=lambda x, t: -x, x=pts(), method="dopri5", atol=1e-4,
                                                   rtol=1e-4, max_nfe=1000),
     {"atol": "pos_float", "rtol": "pos_float", "max_nfe": "posint"}),
    ("log_likelihood", solvers.log_likelihood, dict(velocity=lambda x, t: -x, x=pts(), method="euler", steps=4),
     {"velocity": "callable", "x": "points", "divergence": "name", "return_nfe": "bool"}),
    ("wasserstein2", metrics.wasserstein2, dict(a=pts(), b=pts(seed=1)), {"a": "points", "b": "points"}),
    ("psnr", metrics.psnr, dict(reference=torch.zeros(2, 1, 8, 8), estimate=torch.full((2, 1, 8, 8), 0.1),
                                data_range=2.0),
     {"reference": "images", "estimate": "images", "data_range": "pos_float"}),
    ("nearest_neighbour_distance", metrics.nearest_neighbour_distance, dict(samples=pts(), train=pts(seed=1)),
     {"samples": "points", "train": "points"}),
    ("straightness", metrics.straightness, dict(trajectory=torch.randn(5, B, D)), {"trajectory": "images"}),
    ("GaussianMixture", mixtures.GaussianMixture, dict(means=torch.zeros(2, 2), stds=1.0),
     {"means": "points", "stds": "pos_float"}),
    ("GaussianMixture.sample", lambda **k: gmm().sample(**k), dict(n=4, return_labels=True, generator=None),
     {"n": "posint", "return_labels": "bool", "generator": "generator", "dtype": "float_dtype"}),
    ("interpolant.sample_time", lambda **k: interpolants.AffineInterpolant(2).sample_time(**k),
     dict(n=4, generator=None), {"n": "posint", "generator": "generator", "dtype": "float_dtype"}),
    ("GaussianMixture.log_prob", lambda **k: gmm().log_prob(**k), dict(x=pts()), {"x": "points"}),
    ("GaussianMixture.velocity", lambda **k: gmm().velocity(paths.LinearPath(), **k)(pts(), 0.5),
     dict(source_std=1.0), {"source_std": "pos_float"}),
    ("gmm velocity call", lambda **k: gmm().velocity(paths.LinearPath())(**k), dict(x=pts(), t=0.5),
     {"x": "points", "t": "time"}),
    ("toy.sample", toy.sample, dict(name="moons", n=5), {"name": "name", "n": "posint"}),
    ("toy.gaussian_mixture", toy.gaussian_mixture, dict(name="8gaussians"), {"name": "name"}),
    ("drop_labels", guidance.drop_labels, dict(labels=torch.arange(B) % 3, null_label=3, p=0.5, generator=None),
     {"labels": "labels", "p": "prob", "null_label": "posint", "generator": "generator"}),
    ("check_labels", guidance.check_labels, dict(labels=torch.arange(B) % 3, num_classes=3),
     {"labels": "labels", "num_classes": "posint"}),
    ("guided_velocity", lambda **k: guidance.guided_velocity(Labelled(), **k)(pts(), 0.5),
     dict(labels=torch.arange(B) % 3, scale=2.0), {"labels": "labels", "scale": "nonneg_float"}),
    ("rectangle_masks", conditioning.rectangle_masks, dict(n=2, size=8, min_frac=0.2, max_frac=0.5, generator=None),
     {"n": "posint", "size": "posint", "min_frac": "pos_float", "max_frac": "pos_float", "generator": "generator"}),
    ("stroke_masks", conditioning.stroke_masks, dict(n=2, size=8, strokes=1, vertices=2, width_frac=0.1),
     {"n": "posint", "size": "posint", "strokes": "posint", "vertices": "posint", "width_frac": "pos_float"}),
    ("mask_images", conditioning.mask_images, dict(images=torch.zeros(2, 1, 8, 8), masks=torch.ones(2, 1, 8, 8)),
     {"images": "images", "masks": "images"}),
    ("composite", conditioning.composite, dict(generated=torch.zeros(2, 1, 8, 8), original=torch.ones(2, 1, 8, 8),
                                               masks=torch.ones(2, 1, 8, 8)),
     {"generated": "images", "original": "images", "masks": "images"}),
    ("region_psnr", conditioning.region_psnr, dict(reference=torch.zeros(2, 1, 8, 8),
                                                   estimate=torch.full((2, 1, 8, 8), 0.1),
                                                   region=torch.ones(2, 1, 8, 8)),
     {"reference": "images", "estimate": "images", "region": "images", "data_range": "pos_float"}),
    ("intensity_segmentation", conditioning.intensity_segmentation,
     dict(images=torch.rand(2, 1, 8, 8), num_classes=3, blur=3), {"images": "images", "num_classes": "posint",
                                                                  "blur": "posint"}),
    ("smooth_fill", conditioning.smooth_fill, dict(images=torch.rand(2, 1, 8, 8), masks=torch.zeros(2, 1, 8, 8),
                                                   sigma=2.0, iterations=2),
     {"images": "images", "masks": "images", "sigma": "pos_float", "iterations": "posint"}),
    ("one_hot_maps", conditioning.one_hot_maps, dict(maps=torch.zeros(2, 8, 8, dtype=torch.long), num_classes=3,
                                                     size=4),
     {"maps": "maps", "num_classes": "posint", "size": "posint"}),
    ("downsample_mask", conditioning.downsample_mask, dict(masks=torch.ones(2, 1, 8, 8), size=4),
     {"masks": "images", "size": "posint"}),
    ("SemanticEncoder", conditioning.SemanticEncoder, dict(num_classes=3, latent_size=4),
     {"num_classes": "posint", "latent_size": "posint"}),
    ("spectral_norm", bounds.spectral_norm, dict(matrix=torch.eye(3)), {"matrix": "points"}),
    ("jacobian_norm_lower_bound", bounds.jacobian_norm_lower_bound, dict(f=lambda z: 2 * z, points=pts(), iters=3),
     {"f": "callable", "points": "points", "iters": "posint"}),
    ("flow_matching_error", bounds.flow_matching_error,
     dict(v_hat=lambda z, t: -z, v_true=lambda z, t: z, sample_zt=lambda t, n: pts(n), n=8, n_times=2),
     {"v_hat": "callable", "v_true": "callable", "sample_zt": "callable", "n": "posint", "n_times": "posint"}),
    ("gaussian_w2", bounds.gaussian_w2, dict(m1=torch.zeros(2), c1=torch.eye(2), m2=torch.ones(2), c2=torch.eye(2)),
     {"m1": "points", "c1": "points"}),
    ("latent_factor", bounds.latent_factor, dict(lipschitz_v=1.0), {"lipschitz_v": "nonneg_float"}),
    ("w2_bound", bounds.w2_bound, dict(recon=0.1, lipschitz_dec=1.0, lipschitz_v=0.5, fm_error=0.01),
     {"recon": "nonneg_float", "lipschitz_dec": "nonneg_float", "lipschitz_v": "nonneg_float",
      "fm_error": "nonneg_float"}),
    ("BernsteinSchedule", interpolants.BernsteinSchedule, dict(degree=3), {"degree": "posint"}),
    ("BernsteinSchedule.forward", lambda **k: interpolants.BernsteinSchedule(3)(**k), dict(t=torch.rand(B)),
     {"t": "time"}),
    ("AffineInterpolant.invert", lambda **k: interpolants.AffineInterpolant(2).invert(**k),
     dict(x=pts(), x1=pts(seed=1), t=torch.full((B,), 0.5)), {"x": "points", "x1": "points", "t": "time<1"}),
    ("GlowInterpolant.invert", lambda **k: interpolants.GlowInterpolant(2, 1, 4).invert(**k),
     dict(x=pts(), x1=pts(seed=1), t=torch.full((B,), 0.5)), {"x": "points", "x1": "points", "t": "time<1"}),
    ("GlowInterpolant", interpolants.GlowInterpolant, dict(dim=2, layers=1, hidden=4),
     {"dim": "posint", "layers": "posint", "hidden": "posint"}),
    ("interpolant.sample", lambda **k: interpolants.AffineInterpolant(2).sample(**k),
     dict(x0=pts(), x1=pts(seed=1), t=0.4), {"x0": "points", "x1": "points", "t": "time"}),
    ("optimal_velocity", lambda **k: straightness.optimal_velocity(interpolants.AffineInterpolant(2), **k)(pts(), 0.3),
     dict(data=pts(seed=3), t_max=0.99, chunk=64), {"data": "points", "t_max": "pos_float", "chunk": "posint"}),
    ("material_derivative", straightness.material_derivative, dict(velocity=lambda x, t: -x, x=pts(), t=0.2),
     {"velocity": "callable", "x": "points", "t": "time"}),
    ("fit_interpolant", lambda **k: straightness.fit_interpolant(interpolants.AffineInterpolant(2), progress=False,
                                                                 **k),
     dict(source=pts(), data=pts(seed=1), steps=1, batch_size=2, n_reference=2, t_max=0.5, lr=1e-2),
     {"source": "points", "data": "points", "steps": "posint", "batch_size": "posint", "n_reference": "posint",
      "t_max": "pos_float", "lr": "pos_float"}),
    ("cfm_loss", lambda **k: training.cfm_loss(mlp(), paths.LinearPath(), **k), dict(x0=pts(), x1=pts(seed=1)),
     {"x0": "points", "x1": "points", "coupling": "name"}),
    ("fit", lambda **k: training.fit(torch.nn.Linear(2, 2), lambda s, g: torch.ones(()).requires_grad_(),
                                     progress=False, **k),
     dict(steps=1, lr=1e-3), {"steps": "posint", "lr": "pos_float", "weight_decay": "nonneg_float",
                              "resume": "bool", "override": "bool", "seed": "seed64",
                              "grad_clip": "pos_float", "lr_schedule": "name", "warmup": "nonneg_int",
                              "ema_decay": "prob"}),
    ("train_cfm", lambda **k: training.train_cfm(mlp(), paths.LinearPath(), progress=False, **k),
     dict(source=pts(), target=pts(seed=1), steps=1, batch_size=2),
     {"source": "points", "target": "points", "steps": "posint", "batch_size": "posint", "coupling": "name",
      "prefetch": "nonneg_int", "sampling": "name", "paired": "bool", "label_dropout": "prob",
      "precision": "name", "lr": "pos_float", "seed": "seed64", "resume": "bool", "override": "bool"}),
    ("reflow_pairs", lambda **k: training.reflow_pairs(mlp(), **k), dict(source=pts(), n=4, steps=2, generator=None),
     {"source": "points", "n": "posint", "steps": "posint", "batch_size": "posint", "generator": "generator"}),
    ("TrainerConfig", trainer.TrainerConfig, dict(steps=1, batch_size=2),
     {"steps": "posint", "lr": "pos_float", "ema_decay": "prob", "grad_clip": "pos_float", "warmup": "nonneg_int",
      "checkpoint_every": "nonneg_int", "keep_checkpoints": "posint", "precision": "name", "seed": "seed64",
      "divergence": "pos_float", "skip_steps": "step_list"}),
    ("Trainer", lambda **k: trainer.Trainer(mlp(), lambda s, g: {}, lambda m: m, trainer.TrainerConfig(steps=1,
                                            batch_size=1), progress=False, **k), dict(out_dir=None),
     {"out_dir": "out_dir"}),
    ("Trainer progress", lambda **k: tiny_trainer(**k), dict(progress=False, device="cpu"),
     {"progress": "bool", "device": "device"}),
    ("Trainer.fit", lambda **k: tiny_trainer(progress=False).fit(**k), dict(resume=True, override=False),
     {"resume": "bool", "override": "bool"}),
    ("save_image_grid", lambda **k: images.save_image_grid(path="/tmp/lfm-fuzz-grid.png", **k),
     dict(images=torch.zeros(2, 1, 8, 8), nrow=2), {"images": "images", "nrow": "posint"}),
    ("images.load", images.load, dict(name="digits", size=8, limit=3), {"name": "name", "size": "posint",
                                                                       "limit": "posint"}),
    ("ImageData.split", lambda **k: images.load("digits", limit=10).split(**k), dict(n_heldout=2),
     {"n_heldout": "posint"}),
    ("runtime.seed_everything", runtime.seed_everything, dict(seed=1), {"seed": "nonneg_int"}),
    ("runtime.get_device", runtime.get_device, dict(prefer="cpu"), {"prefer": "name"}),
    ("hub.probe", hub.probe, dict(host="localhost", deadline=0.2), {"host": "name", "deadline": "pos_float"}),
    ("compare.evaluate", lambda **k: compare.evaluate(mlp(), **k), dict(z=pts(), target=pts(seed=1), steps=(1, 2)),
     {"z": "points", "target": "points"}),
    ("compare.train_methods", lambda **k: compare.train_methods(mlp, progress=False, **k),
     dict(source=pts(), data=pts(seed=1), methods=("I-CFM",), steps=1, batch_size=2, seed=0, reflow_pairs=4),
     {"source": "points", "data": "points", "methods": "methods", "seed": "seed64", "reflow_pairs": "posint",
      "interpolant_seconds": "nonneg_float"}),
]

# inputs that are not bad after all (the function is defined there and gives a correct result)
ACCEPTED = {
    ("hub.probe", "host", "nope"),  # a host name that does not resolve: the probe says so
    ("runtime.get_device", "prefer", None),  # None means "choose"
    ("couplings.pair options", "labels", None),  # no labels: pairs across classes
    ("path.sample", "noise", None),  # drawn when not given
    ("fit", "grad_clip", None), ("fit", "ema_decay", None),  # switched off
    ("TrainerConfig", "grad_clip", None), ("TrainerConfig", "ema_decay", None),
    ("TrainerConfig", "divergence", None),  # the divergence guard switched off
    ("save_image_grid", "nrow", None),
    ("images.load", "size", None), ("images.load", "limit", None),
    ("train_cfm", "label_dropout", None),
    ("couplings.pair options", "block_size", None),  # the whole batch as one block
    ("hub.probe", "deadline", None),  # the default deadline
    ("integrate adaptive", "max_nfe", None),  # no limit
    ("reflow_pairs", "n", None),  # every row of source, in order
    ("fit", "seed", None),  # an unseeded run
    ("Trainer progress", "device", None),  # the model's device
    ("Trainer progress", "progress", None),  # the default (runtime.show_progress)
    ("one_hot_maps", "size", None),  # not downsampled
    ("compare.train_methods", "reflow_pairs", None),  # as many as data has
    *((name, "generator", None) for name in ("couplings.pair options", "GaussianMixture.sample", "drop_labels",
                                             "interpolant.sample_time", "rectangle_masks", "reflow_pairs")),
}


def _finite(value) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (tuple, list)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, trainer.FitResult):
        return all(math.isfinite(v) for v in value.losses)
    return True


CASES = [(name, fn, valid, arg, kind, bad) for name, fn, valid, kinds in API for arg, kind in kinds.items()
         for bad in BAD[kind]]
# kinds none of whose values has a meaning: accepting one is a silent coercion (like a complex tensor made real)
MUST_REFUSE = {"bool", "seed64", "methods", "maps", "time<1", "generator", "float_dtype", "device"}


def _id(case):
    name, _, _, arg, _, bad = case
    text = repr(bad) if not isinstance(bad, torch.Tensor) else f"tensor{tuple(bad.shape)}{bad.dtype}{bad.device}"
    return f"{name}-{arg}-{text[:40]}"


def test_every_valid_call_works():
    for name, fn, valid, _ in API:
        assert _finite(fn(**valid)), name


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_bad_input_is_named_or_harmless(case, monkeypatch):
    name, fn, valid, arg, kind, bad = case
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.forget()
    kwargs = dict(valid, **{arg: bad})
    try:
        result = fn(**kwargs)
    except (ValueError, TypeError) as err:
        assert arg in str(err) or arg.rstrip("s") in str(err), f"{name}({arg}={bad!r}): {type(err).__name__}: {err}"
        return
    if isinstance(bad, str) and bad in ("x", "f", "4", "yes") or bad is None and (name, arg, None) not in ACCEPTED:
        pytest.fail(f"{name}({arg}={bad!r}) was accepted")
    if kind in MUST_REFUSE and (name, arg, bad) not in ACCEPTED or isinstance(bad, torch.Tensor) and bad.is_complex():
        pytest.fail(f"{name}({arg}={_id(case)}) was accepted")
    assert _finite(result), f"{name}({arg}={bad!r}) returned non-finite values silently"


class NullLabel(Labelled):
    null_label = 3.7  # not a class index: int() would have made it 3


def _unet_nan_cond():
    net = nets.UNetVelocity(1, 8, cond_channels=1)
    return net(torch.zeros(2, 1, 8, 8), 0.5, cond=torch.full((2, 1, 8, 8), NAN))


def _semantic(maps, keep=None, size=8):
    model = conditioning.ConditionedVelocity(mlp_image(), conditioning.SemanticEncoder(3, size, out_channels=1))
    return model(torch.zeros(2, 1, 8, 8), 0.5, maps, keep=keep)


class mlp_image(torch.nn.Module):  # noqa: N801  a stand-in image velocity with one condition channel
    cond_channels = 1

    def forward(self, x, t, cond=None):
        return x + cond


LONG_MAPS = torch.zeros(3, 8, 8, dtype=torch.long)

# (what, call, a regular expression for the argument its error must name): bad inputs that fit no kind of the
# table above, each of which was once accepted in silence or refused under another argument's name
NAMED = [
    ("velocity of another dtype", lambda: solvers.integrate(lambda x, t: -x.double(), pts(), steps=2), "dtype"),
    ("velocity of another dtype, adaptive", lambda: solvers.integrate(lambda x, t: -x.double(), pts(),
                                                                     method="dopri5"), "dtype"),
    ("log_likelihood velocity dtype", lambda: solvers.log_likelihood(lambda x, t: -x.double(), pts(), method="euler",
                                                                     steps=2), "dtype"),
    ("model.null_label 3.7", lambda: guidance.guided_velocity(NullLabel(), torch.arange(B) % 3, 2.0), "null_label"),
    ("NaN cond through the UNet", _unet_nan_cond, "cond"),
    ("maps of another batch", lambda: _semantic(LONG_MAPS), "maps"),
    ("maps encoded at another size", lambda: _semantic(LONG_MAPS[:2], size=4), "maps"),
    ("keep not bool", lambda: _semantic(LONG_MAPS[:2], keep=torch.ones(2)), "keep"),
    ("keep without maps", lambda: _semantic(None, keep=torch.ones(2, dtype=torch.bool)), "keep"),
    ("reflow_pairs n=None, sampler", lambda: training.reflow_pairs(mlp(), lambda n, g: pts(n), None, steps=2),
     "^source must"),  # not "n=None takes ...": n is fine, source is not
    ("train_cfm source/target shapes", lambda: training.train_cfm(mlp(), paths.LinearPath(), pts(), pts(d=3),
                                                                  coupling="ot", steps=1, batch_size=2,
                                                                  progress=False), "source"),
    ("cfm_loss coupling_kwargs", lambda: training.cfm_loss(mlp(), paths.LinearPath(), pts(), pts(), coupling="ot",
                                                           coupling_kwargs=3), "coupling_kwargs"),
    ("smooth_fill all hole", lambda: conditioning.smooth_fill(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)),
     "masks"),
    ("NaN thresholds", lambda: conditioning.intensity_segmentation(torch.rand(2, 1, 8, 8), 3,
                                                                   thresholds=[NAN, NAN]), "thresholds"),
    ("complex thresholds", lambda: conditioning.intensity_segmentation(
        torch.rand(2, 1, 8, 8), 3, thresholds=torch.tensor([0.1, 0.2], dtype=torch.cfloat)), "thresholds"),
    ("complex coefficients", lambda: interpolants.BernsteinSchedule.from_coefficients(
        torch.tensor([0, 0.5, 1], dtype=torch.cfloat)), "coefficients"),
    ("complex stds", lambda: mixtures.GaussianMixture(torch.zeros(2, 2), torch.ones(2, dtype=torch.cfloat)), "stds"),
    ("complex weights", lambda: mixtures.GaussianMixture(torch.zeros(2, 2), 1.0, torch.ones(2, dtype=torch.cfloat)),
     "weights"),
    ("bool means", lambda: mixtures.GaussianMixture(torch.ones(2, 2, dtype=torch.bool), 1.0), "means"),
    ("complex times", lambda: metrics.path_energy(torch.randn(3, B, D), torch.arange(3.0) + 0j),
     "times"),
    ("psi_inverse names y", lambda: interpolants.GlowInterpolant(2, 1, 4).psi_inverse(pts(d=3), pts(d=3), 0.5),
     "y"),
    ("interpolant sample_time n=0", lambda: interpolants.AffineInterpolant(2).sample_time(0), "n"),
    ("Glow sample_time n=0", lambda: interpolants.GlowInterpolant(2, 1, 4).sample_time(0), "n"),
    ("load_checkpoint override", lambda: tiny_trainer(progress=False).load_checkpoint(override="yes"),
     "override"),
    ("Trainer desc", lambda: tiny_trainer(progress=False, desc=3), "desc"),
    ("StandinFeatures seed 2**70", lambda: metrics.StandinFeatures(seed=2**70), "seed"),
    ("evaluate model", lambda: compare.evaluate(None, pts(), pts(seed=1), steps=(1,)), "model"),
    ("cfm_loss path", lambda: training.cfm_loss(mlp(), None, pts(), pts(seed=1)), "path"),
    ("cfm_loss generator", lambda: training.cfm_loss(mlp(), paths.LinearPath(), pts(), pts(), generator="g"),
     "generator"),
    ("log_likelihood generator", lambda: solvers.log_likelihood(lambda x, t: -x, pts(), divergence="hutchinson",
                                                                generator=3), "generator"),
    ("stroke_masks generator", lambda: conditioning.stroke_masks(2, 8, generator="g"), "^generator must be"),
    ("load_checkpoint path", lambda: tiny_trainer(progress=False).load_checkpoint(3), "path"),
    ("coefficients not numbers", lambda: interpolants.BernsteinSchedule.from_coefficients("abc"), "coefficients"),
    ("save_pretrained seconds NaN", lambda: compare.save_pretrained("/tmp/lfm-fuzz-save", {"I-CFM": mlp()},
                                                                    {"I-CFM": NAN}, {}), "seconds"),
    ("save_pretrained models list", lambda: compare.save_pretrained("/tmp/lfm-fuzz-save", [mlp()], {}, {}),
     "^models must be a dict"),
    ("save_pretrained nothing", lambda: compare.save_pretrained("/tmp/lfm-fuzz-save", {}, {}, {}), "models"),
    ("lr_at a str", lambda: trainer.TrainerConfig(steps=2, batch_size=1).lr_at("x"), "step"),
    ("lr_at before step 0", lambda: trainer.TrainerConfig(steps=2, batch_size=1).lr_at(-1), "step"),
    ("newest at_most", lambda: checkpoints.newest("/tmp", at_most="x"), "at_most"),
    ("train_methods start list", lambda: compare.train_methods(mlp, pts(), pts(seed=1), methods=["I-CFM"], steps=1,
                                                               start=[1]), "start"),
]


@pytest.mark.parametrize("what, call, arg", NAMED, ids=[n[0] for n in NAMED])
def test_bad_input_outside_the_table_is_named(what, call, arg):
    with pytest.raises((ValueError, TypeError)) as err:
        call()
    assert re.search(arg, str(err.value)), f"{what}: {type(err.value).__name__}: {err.value}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.floats(allow_nan=True, allow_infinity=True, width=32) | st.floats(min_value=1e30, max_value=1e300))
def test_numbers_anywhere(value):
    """Any float as sigma, t, a point coordinate or a metric input: a named error or a finite, correct answer."""
    checks = [
        ("sigma", lambda: paths.LinearPath(value).sample(pts(), pts(seed=1), 0.5)),
        ("t", lambda: paths.LinearPath(0.1).sample(pts(), pts(seed=1), value)),
        ("x0", lambda: paths.LinearPath(0.1).sample(torch.tensor(value, dtype=torch.float64).float().expand(B, D),
                                                   pts(seed=1), 0.5)),
        ("a", lambda: metrics.wasserstein2(pts() * value, pts(seed=1))),
        ("reg", lambda: couplings.pair(pts(), pts(seed=1), "sinkhorn", reg=value)),
        ("t", lambda: mlp()(pts(), value)),
        ("t", lambda: interpolants.BernsteinSchedule(3)(torch.tensor([value]))),
        ("sigma", lambda: conditioning.smooth_fill(torch.rand(1, 1, 8, 8), (torch.arange(64) % 3 == 0).float().view(
            1, 1, 8, 8), sigma=value, iterations=2)),
    ]
    for arg, call in checks:
        try:
            out = call()
        except (ValueError, TypeError) as err:
            assert arg in str(err), (arg, value, err)
        else:
            assert _finite(out), (arg, value)


def test_wasserstein2_is_exact_for_huge_and_tiny_coordinates():
    """W2 of +-1e200 used to overflow to 0.0; it is homogeneous, so it must scale exactly."""
    a, b = pts(), pts(seed=1)
    base = metrics.wasserstein2(a, b)
    for s in (1e-200, 1e-30, 1e30, 1e200):
        assert metrics.wasserstein2(a.double() * s, b.double() * s) == pytest.approx(base * s, rel=1e-5)
    big = torch.tensor([[1e200, -1e200]], dtype=torch.float64)
    assert metrics.wasserstein2(big, -big) == pytest.approx(2 * math.sqrt(2) * 1e200, rel=1e-9)
