#!/usr/bin/env python3
"""W2 against the number of network evaluations for MeanFlow beside I-CFM, OT-CFM, 2-RF and a learned interpolant.

    python benchmarks/one_step.py --jobs 2                 # 5 seeds, 2 tasks -> benchmarks/results/one_step.*
    python benchmarks/one_step.py --quick --out /tmp/x     # a small run (tests/test_benchmarks.py)
    python benchmarks/one_step.py --report-only benchmarks/results/one_step.json

MeanFlow (Geng et al., arXiv 2505.13447; lfm_core.average_velocity) learns the average velocity over an interval
and samples by jumps, so its n-step samples cost n network evaluations, like n Euler steps of the other methods.
The tasks, data, seeds, network width and evaluation are those of ``benchmarks/straight_flows.py``
(``straight_flows.make_data``: N(0, I) -> 8gaussians and N(0, I) -> moons, 10k training and 1000 held-out points per
seed; W2 by ``lfm_core.compare.evaluate``). The four flow matching methods' rows are read from that benchmark's
saved measurements (``--baselines``, default ``benchmarks/results/straight_flows.json``: same data, seeds and
evaluation, so they need not be trained again; its settings are checked against this run's); ``--retrain``
trains them here instead.

MeanFlow variants, each an MLP 3 x 64 (SELU) with one extra input for the interval (``nets.MLP(2, 64, 3,
cond_channels=1)`` in ``AverageVelocity``), ``--meanflow-steps`` AdamW steps of batch 256, lr 1e-3 with a cosine
decay, the paper's time pairs (75 % with r = t, the others two sorted draws of logit-normal(0.4, 1)):

* ``MeanFlow``: the paper's adaptive weight (p = 1, c = 1e-3);
* ``MeanFlow p=0``: the plain squared error;
* ``MeanFlow OT``: p = 0 on the pairs of each minibatch's exact OT plan (the coupling of OT-CFM).

On 8gaussians the mixture's marginal velocity is known in closed form (``toy.gaussian_mixture``), so the exact
average velocity over [0, 1] of the independent-coupling flow (what MeanFlow with independent pairs learns) is
computed by an ODE solve (dopri5, tolerance 1e-7): the row ``exact u (I-CFM flow)`` is the W2 a perfect MeanFlow
model would reach in one step.

Targets (means over seeds, per task): a MeanFlow variant's one-step W2 at most OT-CFM's one-step W2, and within
1.5x of the best 100-step W2 of any method.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: flags, command line, report files)
import straight_flows  # noqa: E402  (the baselines' data, settings and runner)

from lfm_core import average_velocity, compare, metrics, nets, paths, solvers, toy  # noqa: E402

TASKS = straight_flows.TASKS
STEPS = straight_flows.STEPS
VARIANTS = {"MeanFlow": dict(power=1.0), "MeanFlow p=0": dict(power=0.0),
            "MeanFlow OT": dict(power=0.0, coupling="ot")}
BASELINES = straight_flows.METHODS
EXACT = "exact u (I-CFM flow)"


@dataclass
class Config:
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    tasks: list = field(default_factory=lambda: list(TASKS))
    variants: list = field(default_factory=lambda: list(VARIANTS))
    n_train: int = 10_000
    n_test: int = 1000
    meanflow_steps: int = 4000
    batch: int = 256
    lr: float = 1e-3
    hidden: int = 64
    depth: int = 3
    threads: int = 2
    jobs: int = 1
    baselines: str = "benchmarks/results/straight_flows.json"
    retrain: bool = False
    quick: bool = False


def baseline_config(cfg: Config) -> straight_flows.Config:
    if cfg.quick:
        return straight_flows.Config(seeds=cfg.seeds, tasks=cfg.tasks, n_train=cfg.n_train, n_test=cfg.n_test,
                                     cfm_steps=100, reflow_pairs=cfg.n_train, interpolant_steps=5, refs=32,
                                     interpolant_batch=16, threads=cfg.threads)
    return straight_flows.Config(seeds=cfg.seeds, tasks=cfg.tasks, n_train=cfg.n_train, n_test=cfg.n_test,
                                 threads=cfg.threads)


def load_baselines(cfg: Config) -> list:
    """The four methods' rows from ``cfg.baselines``, after checking that they were measured on this run's data."""
    path = common.ROOT / cfg.baselines if not Path(cfg.baselines).is_absolute() else Path(cfg.baselines)
    if not path.is_file():
        raise FileNotFoundError(f"no baseline measurements at {path}: run python benchmarks/straight_flows.py, "
                                "or pass --retrain")
    saved = json.loads(path.read_text())
    for key in ("n_train", "n_test"):
        if saved["config"][key] != getattr(cfg, key):
            raise ValueError(f"{path} was measured with {key} = {saved['config'][key]}, this run uses "
                             f"{getattr(cfg, key)}: pass --retrain")
    missing = sorted(set(cfg.seeds) - set(saved["config"]["seeds"]))
    if missing:
        raise ValueError(f"{path} has no measurements for seeds {missing}: pass --retrain")
    rows = [r for r in saved["rows"] if r["task"] in cfg.tasks and r["seed"] in cfg.seeds]
    source = str(path.relative_to(common.ROOT)) if path.is_relative_to(common.ROOT) else str(path)
    return [dict(r, source=source) for r in rows]


def exact_row(task: str, seed: int, cfg: Config) -> dict | None:
    """W2 after one jump of the exact average velocity of the independent-coupling flow (8gaussians only)."""
    if task != "8gaussians":
        return None
    data = straight_flows.make_data(task, seed, baseline_config(cfg))
    v = toy.gaussian_mixture(task).velocity(paths.LinearPath(0.0))
    z = data["z"].double()
    began = time.perf_counter()
    x1 = solvers.integrate(v, z, method="dopri5", atol=1e-7, rtol=1e-7).x.float()
    return {"task": task, "seed": seed, "method": EXACT, "W2@1": metrics.wasserstein2(x1, data["test"]),
            "seconds": time.perf_counter() - began}


def run_cell(task: str, seed: int, cfg: Config, log) -> list:
    """Every MeanFlow variant (and, with ``retrain``, the four baselines) on one task and seed."""
    torch.set_num_threads(cfg.threads)
    bcfg = baseline_config(cfg)
    data = straight_flows.make_data(task, seed, bcfg)
    rows = straight_flows.run_cell(task, seed, bcfg, log) if cfg.retrain else []
    for name in cfg.variants:
        models, seconds = compare.train_methods(
            None, straight_flows.gaussian, data["train"], methods=("MeanFlow",), steps=cfg.meanflow_steps,
            batch_size=cfg.batch, lr=cfg.lr, seed=seed, progress=False, meanflow=VARIANTS[name],
            make_average_model=lambda: average_velocity.AverageVelocity(
                nets.MLP(2, cfg.hidden, cfg.depth, cond_channels=1)))
        row = {"task": task, "seed": seed, "method": name, "seconds": seconds["MeanFlow"],
               **compare.evaluate(models["MeanFlow"], data["z"], data["test"], steps=STEPS)}
        rows.append(row)
        log(f"  {task:10s} seed {seed} {name:13s} " + " ".join(f"W2@{n} {row[f'W2@{n}']:.3f}" for n in STEPS)
            + f" ({row['seconds']:.0f} s)")
    exact = exact_row(task, seed, cfg)
    if exact:
        rows.append(exact)
    return rows


def summarise(rows: list) -> dict:
    groups = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    keys = [f"W2@{n}" for n in STEPS] + ["seconds"]
    return {k: {m: (statistics.mean(r[m] for r in rs), statistics.stdev(r[m] for r in rs) if len(rs) > 1 else 0.0)
                for m in keys if all(m in r for r in rs)} for k, rs in groups.items()}


def targets(summ: dict, task: str, variant: str) -> dict:
    """The issue's two targets for one MeanFlow variant on ``task`` (means over seeds)."""
    mf = summ[(task, variant)]["W2@1"][0]
    ot = summ[(task, "OT-CFM")]["W2@1"][0]
    best = min(v["W2@100"][0] for (t, m), v in summ.items() if t == task and "W2@100" in v)
    return {"one_step": mf, "ot_cfm_one_step": ot, "best_100": best, "vs_ot_met": mf <= ot,
            "ratio_best_100": mf / best, "vs_best_met": mf <= 1.5 * best}


def report(data: dict) -> list[str]:
    """The report's lines from the saved measurements (``data``, as written to the JSON)."""
    cfg, rows = Config(**data["config"]), data["rows"]
    summ = summarise(rows)
    f = lambda ms, d=3: f"{ms[0]:.{d}f} ± {ms[1]:.{d}f}"
    sources = sorted({r["source"] for r in rows if "source" in r})
    lines = ["# One-step generation: W2 against network evaluations", "", data["produced_by"], "",
             f"Mean ± standard deviation over seeds {', '.join(map(str, cfg.seeds))}. W2: exact 2-Wasserstein "
             f"distance between the images of {cfg.n_test} held-out N(0, I) points after n network evaluations "
             f"(Euler steps; jumps for MeanFlow) and {cfg.n_test} held-out data points. Seconds: training on the "
             "machine that measured the row (2-RF includes its I-CFM run, learned its interpolant's fit).", "",
             "## Settings", "",
             f"MeanFlow: `AverageVelocity(MLP(2, {cfg.hidden}, {cfg.depth}, cond_channels=1))`, {cfg.meanflow_steps} "
             f"steps, batch {cfg.batch}, AdamW lr {cfg.lr}, cosine decay, time pairs `TimePairs()` (75 % r = t, "
             "logit-normal(0.4, 1)). Variants: `MeanFlow` p = 1 (the paper's adaptive weight, c = 1e-3); "
             "`MeanFlow p=0` the plain squared error; `MeanFlow OT` p = 0 on minibatch OT pairs.",
             ("The flow matching methods were trained in this run (`--retrain`) with the settings of "
              "`benchmarks/straight_flows.py`." if cfg.retrain else
              f"The flow matching methods' rows are read from {', '.join(f'`{s}`' for s in sources)} "
              "(`benchmarks/straight_flows.py`: same data, seeds and evaluation; its report gives their settings)."),
             "", f"`{EXACT}`: one jump of the exact average velocity over [0, 1] of the independent-coupling flow "
             "(the mixture's closed-form marginal velocity integrated by dopri5): what MeanFlow with independent "
             "pairs would reach with a perfect network.", ""]
    methods = [*BASELINES, *cfg.variants, EXACT]
    for task in cfg.tasks:
        lines += [f"## N(0, I) -> {task}", "",
                  "| method | " + " | ".join(f"W2 {n} eval{'s' if n > 1 else ''}" for n in STEPS) + " | seconds |",
                  "|---|" + "---|" * (len(STEPS) + 1)]
        for method in methods:
            v = summ.get((task, method))
            if v:
                lines.append(f"| {method} | " + " | ".join(f(v[f'W2@{n}']) if f"W2@{n}" in v else "" for n in STEPS)
                             + f" | {f(v['seconds'], 1)} |")
        lines.append("")
        if (task, "OT-CFM") in summ:
            for variant in cfg.variants:
                if (task, variant) not in summ:
                    continue
                t = targets(summ, task, variant)
                lines.append(f"- {variant}: one-step W2 {t['one_step']:.3f} vs OT-CFM's one-step "
                             f"{t['ot_cfm_one_step']:.3f} (target: at most: {'met' if t['vs_ot_met'] else 'not met'}); "
                             f"{t['ratio_best_100']:.2f}x the best 100-step W2 {t['best_100']:.3f} (target <= 1.5x: "
                             f"{'met' if t['vs_best_met'] else 'not met'}).")
            lines.append("")
    return lines


def plot(data: dict):
    """W2 against network evaluations, one panel per task (mean and standard deviation over seeds)."""
    cfg, summ = Config(**data["config"]), summarise(data["rows"])
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(cfg.tasks), figsize=(5.8 * len(cfg.tasks), 4.2), squeeze=False)
    styles = dict(zip([*BASELINES, *VARIANTS], ["o:", "s:", "D:", "^:", "*-", "P-", "X-"], strict=True))
    for ax, task in zip(axes[0], cfg.tasks, strict=True):
        for method in [*BASELINES, *cfg.variants]:
            v = summ.get((task, method))
            if v:
                ax.errorbar(STEPS, [v[f"W2@{n}"][0] for n in STEPS], yerr=[v[f"W2@{n}"][1] for n in STEPS],
                            fmt=styles[method], capsize=3, label=method, lw=2 if method in VARIANTS else 1)
        if (task, EXACT) in summ:
            ax.axhline(summ[(task, EXACT)]["W2@1"][0], color="k", lw=0.8, ls="--", label=EXACT + ", 1 jump")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(STEPS)
        ax.set_xticklabels(map(str, STEPS))
        ax.set_xlabel("network evaluations (Euler steps, or MeanFlow jumps)")
        ax.set_ylabel("W2 to held-out data")
        ax.set_title(f"N(0, I) -> {task} ({len(cfg.seeds)} seeds)")
        ax.legend(fontsize=7)
    return fig


def main(argv=None) -> int:
    p = common.parser(__doc__, quick="2 seeds, short training, small sets, baselines retrained")
    count = common.number(int, minimum=1)
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--tasks", nargs="+", choices=TASKS)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS))
    p.add_argument("--meanflow-steps", type=count)
    p.add_argument("--baselines", type=str, help="saved measurements of benchmarks/straight_flows.py to read")
    p.add_argument("--retrain", action="store_true", help="train the four flow matching methods here too")
    p.add_argument("--threads", type=count, help="torch threads (default 2; 1 per process with --jobs > 1)")
    p.add_argument("--jobs", type=count, help="run the (task, seed) cells in this many processes")
    a = p.parse_args(argv)
    if a.report_only:
        data = common.load(a.report_only, p, keys=("config", "command", "rows"))
        common.save(a.report_only.parent, a.report_only.stem, report(data), figure=plot(data))
        return 0
    cfg = (Config(seeds=[0, 1], n_train=1000, n_test=200, meanflow_steps=60, retrain=True, quick=True)
           if a.quick else Config())
    common.override(cfg, a, ("seeds", "tasks", "variants", "meanflow_steps", "baselines", "threads", "jobs"))
    cfg.retrain = cfg.retrain or a.retrain
    if a.jobs and a.jobs > 1 and a.threads is None:
        cfg.threads = 1
    torch.set_num_threads(cfg.threads)
    command = common.command(__file__, argv)
    start = time.perf_counter()
    rows = [] if cfg.retrain else load_baselines(cfg)
    rows += straight_flows.run_cells(run_cell, cfg)   # the same (task, seed) cells and process pool
    straight_flows.save_run("one_step", a, cfg, command, rows, time.perf_counter() - start, report, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
