#!/usr/bin/env python3
"""W2 against the number of Euler steps for I-CFM, OT-CFM, 2-RF and a learned interpolant (Shankar & Geffner).

    python benchmarks/straight_flows.py --jobs 2              # 5 seeds, 2 tasks -> benchmarks/results/ (~45 min)
    python benchmarks/straight_flows.py --quick --out /tmp/x  # a small run (tests/test_benchmarks.py)
    python benchmarks/straight_flows.py --report-only benchmarks/results/straight_flows.json

The question of arXiv 2503.20719 ("Learning straight flows by learning curved interpolants"): if the
interpolant is learned so that its optimal velocity is straight, how few Euler steps does sampling need?
Tasks: N(0, I) -> 8gaussians and N(0, I) -> moons (lfm_core.toy), 10k training and 1000 held-out
points per seed. Every method trains the same velocity network (MLP 3 x 64, SELU) by conditional flow
matching with the same budget (``--cfm-steps`` AdamW steps, batch 256, lr 1e-3 with a cosine decay, sigma 0):

* I-CFM: straight lines between independent pairs (rectified flow's first flow);
* OT-CFM: straight lines between pairs from the exact OT plan of each minibatch (Tong et al.);
* 2-RF: one reflow (Liu et al.): the I-CFM model maps 10k fresh source points with 100 Euler steps, and a
  new model is trained on those pairs; its cost includes the I-CFM run it starts from;
* learned: a GLOW-style interpolant (lfm_core.interpolants.GlowInterpolant, 3 blocks, conditioners of
  width 32) is first fitted for ``--interpolant-steps`` steps to minimise E |D v*/Dt|^2 of its
  closed-form optimal velocity over reference sets of ``--refs`` data points, for times up to
  ``--t-max`` (lfm_core.straightness.fit_interpolant; the safeguards are explained there), then the network
  is trained by CFM on it.

For every (task, method, seed): W2 (exact, POT) between the images of the 1000 held-out source points
after 1, 2, 4, 8 and 100 Euler steps and the 1000 held-out data points; Rectified Flow's straightness S
and the normalised path energy NPE of the 100-step trajectories; training seconds (this machine).

Training and evaluation are lfm_core.compare.train_methods and lfm_core.compare.evaluate, the functions
notebook 03 calls. Two targets for the learned interpolant are checked in the report: W2 after one step at most
half of I-CFM's after one step, and W2 after two steps within 1.2x of its own 100-step W2.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lfm_core import compare, interpolants, nets, straightness, toy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: flags, command line, report files)

TASKS = ("8gaussians", "moons")
METHODS = compare.METHODS
STEPS = (1, 2, 4, 8, 100)


@dataclass
class Config:
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    tasks: list = field(default_factory=lambda: list(TASKS))
    n_train: int = 10_000
    n_test: int = 1000
    cfm_steps: int = 2000
    batch: int = 256
    lr: float = 1e-3
    reflow_pairs: int = 10_000
    interpolant_steps: int = 800
    interpolant_lr: float = 2e-3
    interpolant_batch: int = 32
    refs: int = 512
    t_max: float = 0.9
    grad_clip: float | None = 1.0
    threads: int = 2
    jobs: int = 1


def make_data(task: str, seed: int, cfg: Config) -> dict:
    g = lambda k: torch.Generator().manual_seed(10_000 * seed + k)  # noqa: E731
    return {"train": toy.sample(task, cfg.n_train, generator=g(1)),
            "test": toy.sample(task, cfg.n_test, generator=g(2)), "z": torch.randn(cfg.n_test, 2, generator=g(3))}


def gaussian(n, g):
    return torch.randn(n, 2, generator=g)


def run_cell(task: str, seed: int, cfg: Config, log) -> list:
    """All four methods on one task and seed (lfm_core.compare, as notebook 03); returns one row per method."""
    data = make_data(task, seed, cfg)
    torch.manual_seed(seed)
    interp = interpolants.GlowInterpolant(2, layers=3, hidden=32)
    fi = straightness.fit_interpolant(interp, gaussian, data["train"], steps=cfg.interpolant_steps,
                                      lr=cfg.interpolant_lr, batch_size=cfg.interpolant_batch, n_reference=cfg.refs,
                                      t_max=cfg.t_max, grad_clip=cfg.grad_clip, seed=seed, progress=False)
    interp.requires_grad_(False)
    models, seconds = compare.train_methods(lambda: nets.MLP(2, 64, 3), gaussian, data["train"], steps=cfg.cfm_steps,
                                            batch_size=cfg.batch, lr=cfg.lr, seed=seed, interpolant=interp,
                                            interpolant_seconds=fi.seconds, reflow_pairs=cfg.reflow_pairs,
                                            progress=False)
    n = max(1, len(fi.losses) // 10)
    rows = []
    for method in METHODS:
        row = {"task": task, "seed": seed, "method": method, "seconds": seconds[method],
               **compare.evaluate(models[method], data["z"], data["test"], steps=STEPS)}
        if method == "learned":
            row.update(straightness_loss_first=statistics.mean(fi.losses[:n]),
                       straightness_loss_last=statistics.mean(fi.losses[-n:]))
        rows.append(row)
        log(f"  {task:10s} seed {seed} {method:8s} W2@1 {row['W2@1']:.3f} W2@2 {row['W2@2']:.3f} "
            f"W2@100 {row['W2@100']:.3f} S {row['S']:.3f} NPE {row['NPE']:.3f} ({row['seconds']:.0f} s)")
    return rows


def summarise(rows: list) -> dict:
    groups = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    keys = [f"W2@{n}" for n in STEPS] + ["S", "NPE", "seconds"]
    return {k: {m: (statistics.mean(r[m] for r in rs), statistics.stdev(r[m] for r in rs) if len(rs) > 1 else 0.0)
                for m in keys} for k, rs in groups.items()}


def targets(summ: dict, task: str) -> dict:
    """The two targets for the learned interpolant on ``task`` (means over seeds)."""
    learned, icfm = summ[(task, "learned")], summ[(task, "I-CFM")]
    one_step = learned["W2@1"][0] / icfm["W2@1"][0]
    two_step = learned["W2@2"][0] / learned["W2@100"][0]
    return {"one_step_ratio": one_step, "one_step_met": one_step <= 0.5,
            "two_step_ratio": two_step, "two_step_met": two_step <= 1.2}


def report(data: dict) -> list[str]:
    """The report's lines from the saved measurements (``data``, as written to the JSON)."""
    cfg, rows = Config(**data["config"]), data["rows"]
    summ = summarise(rows)
    f = lambda ms, d=3: f"{ms[0]:.{d}f} ± {ms[1]:.{d}f}"
    lines = ["# Straight flows: W2 against the number of Euler steps", "", data["produced_by"], "",
             f"Mean ± standard deviation over seeds {', '.join(map(str, cfg.seeds))}. W2: exact 2-Wasserstein "
             f"distance between the images of {cfg.n_test} held-out N(0, I) points after n Euler steps and "
             f"{cfg.n_test} held-out data points. S: Rectified Flow's straightness and NPE: normalised path energy, "
             "both of the 100-step trajectories. Seconds: training on this machine (2-RF includes its I-CFM run; "
             "learned includes fitting the interpolant).", "",
             "## Settings", "",
             f"MLP 3 x 64 (SELU) for every method; {cfg.cfm_steps} CFM steps, batch {cfg.batch}, AdamW lr {cfg.lr}, "
             f"cosine decay, sigma 0; {cfg.n_train} training points. OT-CFM: exact OT plan per minibatch. 2-RF: "
             f"{cfg.reflow_pairs} pairs from the I-CFM model (100 Euler steps). Learned: GlowInterpolant(2, "
             f"layers=3, hidden=32), {cfg.interpolant_steps} straightness steps (lr {cfg.interpolant_lr}, "
             f"{cfg.interpolant_batch} points x {cfg.refs} reference data points, t <= {cfg.t_max}, "
             f"gradient clipping {cfg.grad_clip}), then CFM on it.", ""]
    for task in cfg.tasks:
        lines += [f"## N(0, I) -> {task}", "",
                  "| method | " + " | ".join(f"W2 {n} step{'s' if n > 1 else ''}" for n in STEPS)
                  + " | S | NPE | seconds |", "|---|" + "---|" * (len(STEPS) + 3)]
        for method in METHODS:
            v = summ.get((task, method))
            if v:
                lines.append(f"| {method} | " + " | ".join(f(v[f'W2@{n}']) for n in STEPS)
                             + f" | {f(v['S'])} | {f(v['NPE'])} | {f(v['seconds'], 1)} |")
        lines.append("")
        if (task, "learned") in summ and (task, "I-CFM") in summ:
            t = targets(summ, task)
            lines += [f"Targets for the learned interpolant: one-step W2 / I-CFM one-step W2 = "
                      f"{t['one_step_ratio']:.3f} (target <= 0.5: {'met' if t['one_step_met'] else 'not met'}); "
                      f"two-step W2 / own 100-step W2 = {t['two_step_ratio']:.3f} (target <= 1.2: "
                      f"{'met' if t['two_step_met'] else 'not met'}).", ""]
        ls = [r for r in rows if r["task"] == task and r["method"] == "learned"]
        if ls:
            lines += ["Straightness loss of the interpolant's v* (first / last tenth of its fit, mean over seeds): "
                      f"{statistics.mean(r['straightness_loss_first'] for r in ls):.2f} -> "
                      f"{statistics.mean(r['straightness_loss_last'] for r in ls):.2f}.", ""]
    return lines


def plot(data: dict):
    """W2 against the number of Euler steps, one panel per task (mean and standard deviation over seeds)."""
    cfg, summ = Config(**data["config"]), summarise(data["rows"])
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(cfg.tasks), figsize=(5.5 * len(cfg.tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], cfg.tasks, strict=True):
        for method, marker in zip(METHODS, "osD^", strict=True):
            v = summ.get((task, method))
            if v:
                ax.errorbar(STEPS, [v[f"W2@{n}"][0] for n in STEPS], yerr=[v[f"W2@{n}"][1] for n in STEPS],
                            marker=marker, capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xticks(STEPS)
        ax.set_xticklabels(map(str, STEPS))
        ax.set_xlabel("Euler steps (= network evaluations)")
        ax.set_ylabel("W2 to held-out data")
        ax.set_title(f"N(0, I) -> {task} ({len(cfg.seeds)} seeds)")
        ax.legend()
    return fig


def run_cells(cell_fn, cfg) -> list:
    """``cell_fn(task, seed, cfg, log)`` for every (task, seed) of ``cfg``, in ``cfg.jobs`` processes; all rows."""
    cells = [(task, seed) for task in cfg.tasks for seed in cfg.seeds]
    if cfg.jobs == 1:
        return [row for task, seed in cells for row in cell_fn(task, seed, cfg, common.log)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(cfg.threads,)) as pool:
        n = len(cells)
        parts = pool.map(cell_fn, [c[0] for c in cells], [c[1] for c in cells], [cfg] * n, [common.log] * n)
        return [row for part in parts for row in part]


def main(argv=None) -> int:
    p = common.parser(__doc__, quick="2 seeds, short training, small sets (for the tests)")
    count = common.number(int, minimum=1)
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--tasks", nargs="+", choices=TASKS)
    p.add_argument("--cfm-steps", type=count)
    p.add_argument("--interpolant-steps", type=count)
    p.add_argument("--refs", type=count)
    p.add_argument("--t-max", type=common.number(float, above=0, below=1))
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--threads", type=count, help="torch threads (default 2; 1 per process with --jobs > 1)")
    p.add_argument("--jobs", type=count, help="run the (task, seed) cells in this many processes")
    a = p.parse_args(argv)
    if a.report_only:
        data = common.load(a.report_only, p, keys=("config", "command", "rows"))
        common.save(a.report_only.parent, a.report_only.stem, report(data), figure=plot(data))
        return 0
    cfg = Config(seeds=[0, 1], n_train=2000, n_test=300, cfm_steps=200, reflow_pairs=2000, interpolant_steps=10,
                 refs=32, interpolant_batch=16) if a.quick else Config()
    common.override(cfg, a, ("seeds", "tasks", "cfm_steps", "interpolant_steps", "refs", "t_max", "grad_clip",
                             "threads", "jobs"))
    if a.jobs and a.jobs > 1 and a.threads is None:
        cfg.threads = 1
    torch.set_num_threads(cfg.threads)
    command = common.command(__file__, argv)
    start = time.perf_counter()
    rows = run_cells(run_cell, cfg)
    save_run("straight_flows", a, cfg, command, rows, time.perf_counter() - start, report, plot)
    return 0


def save_run(stem: str, args, cfg, command: str, rows: list, wall: float, report, plot) -> None:
    """Write a run's report, measurements and figure (this script's and one_step.py's, which runs the same cells)
    and print the report."""
    machine = common.machine()
    header = common.produced_by(command, machine["host"], [
        machine["arch"], f"torch {torch.__version__}", f"{cfg.threads} torch threads"], wall / 60)
    data = {"config": asdict(cfg), "command": command, "produced_by": header, "wall_seconds": wall,
            "torch": torch.__version__, "rows": rows}
    md = common.save(args.out, stem + ("_quick" if args.quick else ""), report(data), data, plot(data))
    print(md.read_text())


if __name__ == "__main__":
    sys.exit(main())
