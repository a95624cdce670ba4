r"""Few-step generation compared: one velocity network trained by several flow matching methods, judged by sampling.

Straight flows need few integration steps. The methods here differ only in what they regress on (Tong et al.,
arXiv 2302.00482; Liu et al., arXiv 2209.03003; Shankar & Geffner, arXiv 2503.20719), all by
:func:`lfm_core.training.train_cfm` with the same network, budget and seed:

* ``"I-CFM"``: straight lines between independent pairs (rectified flow's first flow);
* ``"OT-CFM"``: straight lines between the pairs of each minibatch's exact OT plan;
* ``"2-RF"``: straight lines between the pairs ``(x0, Z_1(x0))`` of the I-CFM flow (one reflow), so its time
  includes the I-CFM run it starts from;
* ``"learned"``: the conditional paths of a learned interpolant (:mod:`lfm_core.interpolants`), fitted
  beforehand (:func:`lfm_core.straightness.fit_interpolant`); its time includes that fit;
* ``"MeanFlow"`` (in :data:`ONE_STEP_METHODS`, asked for by name): not a velocity but the average velocity
  over an interval, trained by :func:`lfm_core.average_velocity.train_meanflow` (Geng et al., arXiv 2505.13447)
  and sampled by jumps.

The methods that differ only in their path and coupling are one table, :func:`recipe` (``"I-CFM"``,
``"OT-CFM"``, ``"SB-CFM"``, ``"FM"``, ``"2-RF"``: the ``(path, coupling, coupling_kwargs)`` that
:func:`lfm_core.training.train_cfm` takes), shared by :func:`train_methods`, notebook 02 and
``benchmarks/ot_cfm_2d.py``.

:func:`evaluate` measures what a sampler with ``n`` Euler steps gets, with one set of metric keys everywhere:
``W2@n``, the exact W2 between the images of held-out source points and held-out data after ``n`` steps (``n``
jumps for an average-velocity model), and the path energy ``PE``, Rectified Flow's straightness ``S`` and the
normalised path energy ``NPE`` of the finest trajectory (``W2@dopri5`` and ``NFE@dopri5`` on request). Notebooks
02, 03 and 07 and the benchmarks ``ot_cfm_2d``, ``straight_flows`` and ``one_step`` use these functions.

Copy with: utils, metrics, paths, solvers, training, trainer, trainer_config, batches, checkpoints, devices, images,
image_files, couplings, guidance, runtime, hub, average_velocity, store (``torch``, ``numpy``, ``POT``, ``safetensors``,
``tqdm``, ``Pillow``).
"""

from __future__ import annotations

import shutil
import time

import torch

from . import average_velocity, metrics, solvers, store, training
from .utils import check_finite, check_nonnegative, check_positive_int, check_seed, check_tensor

__all__ = ["RECIPES", "METHODS", "ONE_STEP_METHODS", "recipe", "train_methods", "evaluate", "save_pretrained",
           "load_pretrained"]

#: method -> (path, coupling): the conditional flow matching methods that differ only in these (:func:`recipe`)
RECIPES = {
    "I-CFM": ("LinearPath", "independent"),   # straight lines between independent pairs
    "OT-CFM": ("LinearPath", "ot"),           # ... between the pairs of each minibatch's exact OT plan
    "SB-CFM": ("BridgePath", "sinkhorn"),     # Brownian bridges between pairs of the entropic plan, reg = 2 sigma^2
    "FM": ("TargetPath", "independent"),      # Lipman et al.'s path (a standard normal source)
    "2-RF": ("LinearPath", "independent"),    # straight lines between given reflow pairs (paired=True)
}
#: the methods :func:`train_methods` compares for few-step sampling (notebook 03, benchmarks/straight_flows.py)
METHODS = ("I-CFM", "OT-CFM", "2-RF", "learned")
ONE_STEP_METHODS = (*METHODS, "MeanFlow")


def recipe(method: str, *, sigma: float = 0.0, sb_sigma: float = 1.0) -> tuple:
    r"""``(path, coupling, coupling_kwargs)`` of one method of :data:`RECIPES`, for
    :func:`lfm_core.training.train_cfm`.

    ``sigma`` is the width of the Gaussian path around the line (``sigma_min`` for ``"FM"``); ``"SB-CFM"``
    uses the Brownian bridge of width ``sb_sigma`` and the entropic plan with ``reg = 2 sb_sigma^2``, the
    pairing under which the bridge is the Schrodinger bridge (Tong et al., arXiv 2302.00482, Prop. 3.4).
    """
    from . import paths

    if not isinstance(method, str) or method not in RECIPES:
        raise ValueError(f"method must be one of {', '.join(RECIPES)}, got {method!r}")
    check_nonnegative(sigma, "sigma")
    check_nonnegative(sb_sigma, "sb_sigma", strict=True)
    path_name, coupling = RECIPES[method]
    if path_name == "BridgePath":
        return paths.BridgePath(sb_sigma), coupling, {"reg": 2 * float(sb_sigma) ** 2}
    if path_name == "TargetPath":
        return paths.TargetPath(sigma), coupling, {}
    return paths.LinearPath(sigma), coupling, {}


def train_methods(make_model, source, data: torch.Tensor, *, methods=METHODS, steps: int, batch_size: int = 256,
                  lr: float = 1e-3, seed: int = 0, interpolant=None, interpolant_seconds: float = 0.0,
                  reflow_pairs: int | None = None, progress: bool | None = None, start: dict | None = None,
                  start_seconds: dict | None = None, make_average_model=None,
                  meanflow: dict | None = None) -> tuple[dict, dict]:
    """Train a fresh network ``make_model()`` by each of ``methods`` from ``source`` to ``data``.

    ``source`` is a tensor of points or ``(n, generator) -> points``; ``data`` a tensor. Every method uses the
    straight line without noise (``sigma = 0``), AdamW with a cosine decay, ``steps`` steps of ``batch_size``,
    and ``torch.manual_seed(seed)`` before building its network, so all start from the same weights.
    ``"2-RF"`` reflows ``reflow_pairs`` fresh source points (default: as many as ``data`` has) with 100 Euler
    steps of the I-CFM model (trained first if asked for). ``"learned"`` needs ``interpolant``, fitted and
    frozen; ``interpolant_seconds`` (its fitting time) is added to its seconds. ``start`` (method -> state dict,
    e.g. from :func:`load_pretrained`) continues pretrained networks instead of fresh ones, for ``steps`` more
    steps, and ``start_seconds`` (method -> seconds) adds the time they took. ``"MeanFlow"`` trains
    ``make_average_model()`` (an :class:`lfm_core.average_velocity.AverageVelocity`) by
    :func:`lfm_core.average_velocity.train_meanflow` with the same budget, batch, learning rate and seed,
    overridden by the keyword arguments in ``meanflow`` (e.g. ``{"steps": 4000, "power": 0.0}``). Returns
    ``(models, seconds)``, dicts keyed by method.
    """
    if isinstance(methods, str) or not isinstance(methods, (list, tuple)) \
            or not all(isinstance(m, str) and m in ONE_STEP_METHODS for m in methods):
        raise ValueError(f"methods must be a list or tuple of names from {', '.join(ONE_STEP_METHODS)}, got "
                         f"{methods!r}")
    if not methods:
        raise ValueError(f"methods is empty: name at least one of {', '.join(ONE_STEP_METHODS)}")
    if twice := sorted({m for m in methods if methods.count(m) > 1}):
        raise ValueError(f"methods names {twice} more than once: each method is trained once")
    check_seed(seed, "seed")
    check_nonnegative(interpolant_seconds, "interpolant_seconds")
    if reflow_pairs is not None:
        check_positive_int(reflow_pairs, "reflow_pairs")
    if not callable(make_model) and any(m != "MeanFlow" for m in methods):
        raise TypeError(f"make_model must be a callable that builds a fresh network, got {type(make_model).__name__}")
    if "MeanFlow" in methods and not callable(make_average_model):
        raise ValueError("the 'MeanFlow' method needs make_average_model= (a callable that builds an "
                         "average_velocity.AverageVelocity)")
    if meanflow is not None and not isinstance(meanflow, dict):
        raise TypeError(f"meanflow must be a dict of train_meanflow keyword arguments, got {type(meanflow).__name__}")
    check_tensor(data, "data", min_dim=2)
    check_finite(data, "data", boundary=True)
    if isinstance(source, torch.Tensor):
        check_tensor(source, "source", min_dim=2)
        if source.shape[1:] != data.shape[1:]:
            raise ValueError(f"source and data must hold points of one shape, got {tuple(source.shape[1:])} and "
                             f"{tuple(data.shape[1:])}")
    elif not callable(source):
        raise TypeError(f"source must be a tensor of points or a callable (n, generator) -> points, got "
                        f"{type(source).__name__}")
    if "learned" in methods and interpolant is None:
        raise ValueError("the 'learned' method needs interpolant= (fitted with straightness.fit_interpolant)")
    for given, name in ((start, "start"), (start_seconds, "start_seconds")):
        if given is not None and not isinstance(given, dict):
            raise TypeError(f"{name} must be a dict keyed by method, got {type(given).__name__}")
    start, start_seconds = dict(start or {}), dict(start_seconds or {})
    for name, value in start_seconds.items():
        check_nonnegative(value, f"start_seconds[{name!r}]")
    for name, given in (("start", start), ("start_seconds", start_seconds)):
        unknown = sorted(set(given) - set(ONE_STEP_METHODS))
        if unknown:
            raise ValueError(f"{name} has entries for unknown methods {unknown}; methods are "
                             f"{', '.join(ONE_STEP_METHODS)}")
    kw = dict(steps=steps, batch_size=batch_size, lr=lr, lr_schedule="cosine", seed=seed, progress=progress)
    order = [m for m in ONE_STEP_METHODS if m in methods or (m == "I-CFM" and "2-RF" in methods)]
    models, seconds = {}, {}
    for name in order:
        torch.manual_seed(seed)
        model = make_average_model() if name == "MeanFlow" else make_model()
        if name in start:
            model.load_state_dict(start[name])
        began = time.perf_counter()
        if name in ("I-CFM", "OT-CFM"):
            path, coupling, _ = recipe(name)
            training.train_cfm(model, path, source, data, coupling=coupling, **kw)
        elif name == "2-RF":
            n = reflow_pairs if reflow_pairs is not None else data.shape[0]
            x0, x1 = training.reflow_pairs(models["I-CFM"], source, n, steps=100,
                                           generator=torch.Generator().manual_seed((seed + 77) % 2**64))
            training.train_cfm(model, recipe(name)[0], x0, x1, paired=True, **kw)
        elif name == "MeanFlow":
            average_velocity.train_meanflow(model, source, data, **{**kw, **(meanflow or {})})
        else:
            training.train_cfm(model, interpolant, source, data, **kw)
        seconds[name] = time.perf_counter() - began + float(start_seconds.get(name, 0.0))
        models[name] = model.eval()
    if "2-RF" in seconds:
        seconds["2-RF"] += seconds["I-CFM"]  # reflow starts from the I-CFM model
    if "learned" in seconds:
        seconds["learned"] += float(interpolant_seconds)  # and the learned path had to be fitted first
    keep = [m for m in order if m in methods]
    return {m: models[m] for m in keep}, {m: seconds[m] for m in keep}


@torch.no_grad()
def evaluate(model, z: torch.Tensor, target: torch.Tensor, *, steps=(1, 2, 4, 8, 100), dopri5: bool = False,
             trajectory: bool = False) -> dict:
    """How well ``model`` carries the held-out source points ``z`` to the held-out ``target`` points.

    ``W2@n`` for each ``n`` in ``steps``: the exact W2 between the points after ``n`` Euler steps (jumps of
    :func:`lfm_core.average_velocity.sample` for an average-velocity model) and ``target``. ``PE``, ``S`` and
    ``NPE`` (:mod:`lfm_core.metrics`: path energy, straightness, normalised path energy) of the trajectory with
    the most steps. ``dopri5=True`` adds ``W2@dopri5`` and ``NFE@dopri5`` (the adaptive solver's evaluations);
    ``trajectory=True`` adds that finest ``trajectory`` (``[steps + 1, n, ...]``) for plotting.
    """
    if not callable(model):
        raise TypeError(f"model must be callable (a velocity or average-velocity network), got {type(model).__name__}")
    for v, name in ((z, "z"), (target, "target")):
        check_tensor(v, name, min_dim=2)
        check_finite(v, name, boundary=True)
    if z.shape[1:] != target.shape[1:]:
        raise ValueError(f"z and target must hold points of one shape, got {tuple(z.shape[1:])} and "
                         f"{tuple(target.shape[1:])}")
    if isinstance(steps, int) or not steps:
        raise TypeError(f"steps must be a non-empty sequence of step counts, got {steps!r}")
    steps = [check_positive_int(n, "steps") for n in steps]
    for flag, name in ((dopri5, "dopri5"), (trajectory, "trajectory")):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    jumps = average_velocity.is_average_model(model)
    if dopri5 and jumps:
        raise ValueError("dopri5=True integrates a velocity; an average-velocity model is sampled by jumps")
    finest = max(steps)
    out = {}
    for n in steps:
        if jumps:
            sol = average_velocity.sample(model, z, steps=n, return_trajectory=n == finest)
        else:
            sol = solvers.integrate(model, z, method="euler", steps=n, return_trajectory=n == finest)
        out[f"W2@{n}"] = metrics.wasserstein2(sol.x, target)
        if n == finest:
            traj = sol.trajectory
    out["PE"] = metrics.path_energy(traj)
    out["S"] = metrics.straightness(traj)
    out["NPE"] = metrics.normalized_path_energy(traj, z, target)
    if dopri5:
        sol = solvers.integrate(model, z, method="dopri5")
        out["W2@dopri5"], out["NFE@dopri5"] = metrics.wasserstein2(sol.x, target), sol.nfe
    if trajectory:
        out["trajectory"] = traj
    return out


def save_pretrained(folder, models: dict, seconds: dict, record: dict) -> None:
    """Write ``models`` (method -> network) to ``folder``, each as the network ``folder/<method>/``
    (:func:`lfm_core.store.save`) whose record is ``record`` (how they were made) with the seconds it took;
    methods stored there before and not in ``models`` are removed."""
    folder = store.check_path(folder, "folder")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"folder {folder} is a file, not a folder of networks")
    for given, name in ((models, "models"), (seconds, "seconds")):
        if not isinstance(given, dict):
            raise TypeError(f"{name} must be a dict keyed by method, got {type(given).__name__}")
    if not models:
        raise ValueError("models is empty: there is nothing to save")
    unknown = sorted(set(models) - set(ONE_STEP_METHODS))
    if unknown:
        raise ValueError(f"models has entries for unknown methods {unknown}; methods are "
                         f"{', '.join(ONE_STEP_METHODS)}")
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    missing = sorted(set(models) - set(seconds))
    if missing:
        raise ValueError(f"seconds has no entry for {missing}")
    for name in models:
        check_nonnegative(seconds[name], f"seconds[{name!r}]")
    for name, model in models.items():
        store.save(folder / name, model, dict(record, seconds=round(float(seconds[name]), 2)))
    for name in sorted(set(ONE_STEP_METHODS) - set(models)):
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)


def load_pretrained(task: str, root=None, *, name: str = "straight_flows") -> tuple[dict, dict, dict]:
    """The networks that ``scripts/train_straight_flows.py`` trained on ``N(0, I) -> task`` by each method, as
    ``(state_dicts, seconds, record)`` (method -> state dict; method -> seconds; how they were made, with the
    ``methods`` and their ``seconds``), read from ``root/<name>_<task>/<method>/`` (default root: the package's
    :data:`lfm_core.store.ASSETS`; ``name="one_step"`` holds the MeanFlow models of notebook 07), every file
    verified against its checksum. Pass them to :func:`train_methods` as ``start=`` and ``start_seconds=`` to
    continue them. A ``task`` or ``name`` the package does not ship is a ``ValueError`` listing what it ships; in
    a ``root`` of yours, a ``FileNotFoundError`` (not trained there yet)."""
    for value, arg in ((task, "task"), (name, "name")):
        if not isinstance(value, str) or not value.strip():
            raise (ValueError if isinstance(value, str) else TypeError)(f"{arg} must be a non-empty str, got {value!r}")
    base = store.ASSETS if root is None else store.check_path(root, "root")
    folder = base / f"{name}_{task}"
    methods = [m for m in ONE_STEP_METHODS if (folder / m / "config.json").is_file()]
    if not methods:   # out of what the package ships: a ValueError; not (yet) in a folder of yours: not found
        known = sorted(p.name for p in base.iterdir() if any((p / m / "config.json").is_file()
                                                             for m in ONE_STEP_METHODS)) if base.is_dir() else []
        raise (ValueError if root is None else FileNotFoundError)(
            f"task {task!r} with name {name!r} has no pretrained networks: {folder} holds none (known: "
            f"{', '.join(known) or 'none'}); run python scripts/train_straight_flows.py"
            + ("" if name == "straight_flows" else f" --name {name} --methods MeanFlow"))
    states, seconds, record = {}, {}, {}
    for m in methods:
        states[m], config = store.load_state(folder / m)
        record = dict(config["record"])
        seconds[m] = float(record.pop("seconds", 0.0))
    return states, seconds, dict(record, methods=methods, seconds=dict(seconds))
