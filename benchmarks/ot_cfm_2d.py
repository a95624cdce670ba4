#!/usr/bin/env python3
"""Reproduce the 2D table of the OT-CFM paper (Tong et al., arXiv 2302.00482, Table 2): W2 and NPE.

    python benchmarks/ot_cfm_2d.py                      # the table (5 seeds), into benchmarks/results/
    python benchmarks/ot_cfm_2d.py --peer torchcfm      # beside torchcfm's matchers (-> ot_cfm_2d_vs_torchcfm.*)
    python benchmarks/ot_cfm_2d.py --quick --out /tmp/x # a small run (used by tests/test_benchmarks.py)

Tasks: N -> 8gaussians, moons -> 8gaussians, N -> moons, N -> scurve (data of lfm_core.toy, as
defined by the paper's code). Methods: I-CFM, OT-CFM, SB-CFM, FM (Lipman et al.; Gaussian source
only) and 2-RF (one reflow of the I-CFM model). For every task, method and seed: train the velocity
MLP, push the 1000 held-out source points through 100 Euler steps, and report

* W2@100: exact 2-Wasserstein distance between the generated points and the 1000 held-out target points;
* NPE: |PE - W2^2(source test, target test)| / W2^2(source test, target test), with PE the path energy
  of the Euler trajectories (Sec. 5.1 of the paper);

both by ``lfm_core.compare.evaluate`` (which also records S and PE), the methods' paths and couplings by
``lfm_core.compare.recipe``.

Settings, from the paper's code (runner/configs: experiment/cfm.yaml, model/{cfm,otcfm,sbcfm}.yaml,
datamodule/*.yaml, scripts/two-dim-cfm.sh), and where this script differs:

* MLP with 3 hidden layers of 64 units, SELU, time appended to the input: same.
* AdamW, lr 1e-3, weight decay 1e-5, constant learning rate: same.
* batch 512; 10k / 1k / 1k train / validation / test points; epochs over the training set with the
  last incomplete batch dropped; fresh Gaussian noise each step when the source is N(0, I): same.
* sigma = 0.1 for I-CFM, OT-CFM, FM (sigma_min) and 2-RF; SB-CFM: sigma = 1.0 with Sinkhorn at
  reg = 2 sigma^2 = 2: same.
* seeds 42-46: same seeds, but our data and initialisations are drawn by our own generators.
* **training length**: the paper trains 1000 epochs (about 19.5k steps) and evaluates the checkpoint
  with the best validation score. We train ``--steps`` steps (default 4000, about 205 epochs, chosen
  so that the whole 5-seed table fits in an hour on 2 CPU cores) and evaluate the final model.
* **couplings**: OT-CFM pairs points by a permutation from the exact plan (no point duplicated or
  dropped), solved on random sub-batches of ``--ot-block`` points; the paper's code samples 512 pairs
  from the full 512-point plan with replacement. SB-CFM draws a permutation from the entropic plan in
  the same way (``--sb-block``); Sinkhorn stops at a column-marginal error of ``--sb-tol`` (POT's
  stopThr). The ``--peer torchcfm`` run uses torchcfm's own matchers (full plans, with replacement).
* 2-RF: the I-CFM model of the same seed generates 10k pairs (100 Euler steps from fresh source
  points), and a new model is trained on them by CFM with sigma = 0.1 for the same number of steps.

Every seed of a (task, method) is trained at once as one MLPEnsemble by ``lfm_core.training.train_cfm``, the
function users call (mathematically the same as separate runs: the parameters are disjoint, the loss sums the
members' losses and AdamW is elementwise), with the couplings of each member computed ``--workers`` steps
ahead in as many threads.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from lfm_core import compare, nets, paths, toy, training
from lfm_core.batches import CFMBatches

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: flags, command line, report files)

TASKS = {
    "N->8gaussians": ("gaussian", "8gaussians"),
    "moons->8gaussians": ("twodim_moons", "twodim_8gaussians"),
    "N->moons": ("gaussian", "moons"),
    "N->scurve": ("gaussian", "scurve"),
}
METHODS = list(compare.RECIPES)  # I-CFM, OT-CFM, SB-CFM, FM, 2-RF
PEER_METHODS = ["I-CFM", "OT-CFM", "SB-CFM", "FM"]  # torchcfm has no reflow

# Values quoted from the paper: the NPE of OT-CFM and I-CFM on two tasks, as quoted by secondary sources; the
# rest of Table 2 is left empty rather than filled from memory.
PAPER = {
    ("N->8gaussians", "OT-CFM", "NPE"): 0.018,
    ("N->8gaussians", "I-CFM", "NPE"): 0.222,
    ("moons->8gaussians", "OT-CFM", "NPE"): 0.053,
    ("moons->8gaussians", "I-CFM", "NPE"): 2.738,
}
PAPER_SOURCE = ("Tong et al., arXiv 2302.00482, Table 2, as quoted by secondary sources; the table's other cells are "
                "not quoted here")


@dataclass
class Config:
    seeds: list = field(default_factory=lambda: [42, 43, 44, 45, 46])
    tasks: list = field(default_factory=lambda: list(TASKS))
    methods: list = field(default_factory=lambda: list(METHODS))
    steps: int = 4000
    batch: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-5
    sigma: float = 0.1
    sb_sigma: float = 1.0
    n_train: int = 10_000
    n_val: int = 1000
    n_test: int = 1000
    euler_steps: int = 100
    ot_block: int | None = 128
    sb_block: int | None = 128
    sb_tol: float = 1e-2
    workers: int = 2
    threads: int = 1  # torch intra-op threads while training the table (the coupling workers use the other core)
    timing_steps: int = 150


# ----------------------------------------------------------------------------------------- data
def make_data(task: str, seed: int, cfg: Config) -> dict:
    """Train / validation / test sets of one task and seed (source and target), as float32 tensors."""
    src, tgt = TASKS[task]
    g = torch.Generator().manual_seed(seed * 7919 + list(TASKS).index(task))
    n = cfg.n_train + cfg.n_val + cfg.n_test
    s, t = toy.sample(src, n, generator=g), toy.sample(tgt, n, generator=g)
    a, b = cfg.n_train, cfg.n_train + cfg.n_val
    return {"source": s[:a], "target": t[:a], "source_test": s[b:], "target_test": t[b:],
            "gaussian_source": src == "gaussian"}


# ---------------------------------------------------------------------------------- methods
def method_spec(method: str, cfg: Config):
    """(path, coupling name, coupling kwargs) of one of our methods: compare.recipe's, with this table's blocks."""
    path, coupling, kwargs = compare.recipe(method, sigma=cfg.sigma, sb_sigma=cfg.sb_sigma)
    if coupling == "ot":
        kwargs = {**kwargs, "block_size": cfg.ot_block}
    elif coupling == "sinkhorn":
        kwargs = {**kwargs, "block_size": cfg.sb_block, "tol": cfg.sb_tol}
    return path, coupling, kwargs


def peer_matcher(method: str, cfg: Config):
    import torchcfm.conditional_flow_matching as tcfm

    if method == "I-CFM":
        return tcfm.ConditionalFlowMatcher(sigma=cfg.sigma)
    if method == "OT-CFM":
        return tcfm.ExactOptimalTransportConditionalFlowMatcher(sigma=cfg.sigma)
    if method == "SB-CFM":
        return tcfm.SchrodingerBridgeConditionalFlowMatcher(sigma=cfg.sb_sigma, ot_method="sinkhorn")
    if method == "FM":
        return tcfm.TargetConditionalFlowMatcher(sigma=cfg.sigma)
    raise ValueError(f"torchcfm has no matcher for {method!r}")


# ---------------------------------------------------------------------------------- training
def new_ensemble(seeds) -> nets.MLPEnsemble:
    members = []
    for s in seeds:
        torch.manual_seed(s)
        members.append(nets.MLP(2, hidden=64, depth=3, activation="selu"))
    return nets.MLPEnsemble.from_models(members)


def gaussian(n, g):
    return torch.randn(n, 2, generator=g)


def train(method: str, datas, seeds, cfg: Config, pairs=None):
    """Train one ensemble (one member per seed) with lfm_core.training.train_cfm; returns (ensemble, seconds)."""
    ens = new_ensemble(seeds)
    path, coupling, kwargs = method_spec(method, cfg)
    if pairs is not None:  # 2-RF: the pairs of each member, sampled jointly in epochs
        sources, targets = [p[0] for p in pairs], [p[1] for p in pairs]
    else:
        sources = [gaussian if d["gaussian_source"] else d["source"] for d in datas]
        targets = [d["target"] for d in datas]
    res = training.train_cfm(ens, path, sources, targets, steps=cfg.steps, batch_size=cfg.batch, lr=cfg.lr,
                             weight_decay=cfg.weight_decay, coupling=coupling, coupling_kwargs=kwargs,
                             prefetch=cfg.workers if coupling != "independent" else 0, sampling="epochs",
                             paired=pairs is not None, seed=seeds[0], progress=False)
    return ens, res.seconds


def train_peer(method: str, datas, seeds, cfg: Config):
    """The same loop with torchcfm's matcher in place of our coupling and path (a plain AdamW loop: torchcfm is a
    library of matchers, not of training loops)."""
    ens = new_ensemble(seeds)
    opt = torch.optim.AdamW(ens.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    matcher = peer_matcher(method, cfg)
    np.random.seed(seeds[0])  # noqa: NPY002 - torchcfm draws its plan samples from numpy's global generator
    # the same (uncoupled) batches as train_cfm draws, member by member
    sources = [gaussian if d["gaussian_source"] else d["source"] for d in datas]
    batches = CFMBatches(paths.LinearPath(), sources, [d["target"] for d in datas], cfg.batch, seed=seeds[0],
                         sampling="epochs")
    b = cfg.batch
    start = time.perf_counter()
    for step in range(cfg.steps):
        batch = batches(step)
        outs = [matcher.sample_location_and_conditional_flow(batch["x0"][m * b:(m + 1) * b],
                                                             batch["x1"][m * b:(m + 1) * b]) for m in range(len(seeds))]
        t, xt, ut = (torch.cat([o[k] for o in outs]) for k in range(3))
        loss = (ens(xt, t) - ut).pow(2).mean() * len(seeds)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return ens, time.perf_counter() - start


def reflow(ens: nets.MLPEnsemble, datas, seeds, cfg: Config):
    """For 2-RF: (x0, x1 = flow of the I-CFM member) for n_train fresh source points per member."""
    out = []
    for i, (data, s) in enumerate(zip(datas, seeds, strict=True)):
        x0 = gaussian(cfg.n_train, torch.Generator().manual_seed(s + 999)) if data["gaussian_source"] else \
            data["source"]
        out.append(training.reflow_pairs(ens.member(i), x0, steps=cfg.euler_steps))
    return out


def run_table(cfg: Config, peer: str | None, log) -> list:
    rows = []
    for task in cfg.tasks:
        datas = [make_data(task, s, cfg) for s in cfg.seeds]
        icfm = None
        for method in cfg.methods:
            if method == "FM" and not datas[0]["gaussian_source"]:
                continue  # Lipman's path needs a standard normal source
            for impl in ["lfm_core"] + ([peer] if peer and method in PEER_METHODS else []):
                if impl != "lfm_core":
                    ens, secs = train_peer(method, datas, cfg.seeds, cfg)
                elif method == "2-RF":
                    if icfm is None:
                        raise RuntimeError("2-RF needs the I-CFM run of the same task first")
                    ens, secs = train(method, datas, cfg.seeds, cfg, pairs=reflow(icfm, datas, cfg.seeds, cfg))
                else:
                    ens, secs = train(method, datas, cfg.seeds, cfg)
                if method == "I-CFM" and impl == "lfm_core":
                    icfm = ens
                for i, (d, s) in enumerate(zip(datas, cfg.seeds, strict=True)):
                    r = compare.evaluate(ens.member(i), d["source_test"], d["target_test"], steps=(cfg.euler_steps,))
                    rows.append({"task": task, "method": method, "impl": impl, "seed": s, **r,
                                 "train_seconds_all_seeds": secs})
                ws = [r[w2_key(cfg)] for r in rows[-len(cfg.seeds):]]
                ns = [r["NPE"] for r in rows[-len(cfg.seeds):]]
                log(f"  {task:18s} {method:7s} {impl:9s} W2 {statistics.mean(ws):.3f}  "
                    f"NPE {statistics.mean(ns):.3f}  ({secs:.0f} s for {len(cfg.seeds)} seeds)")
    return rows


# ------------------------------------------------------------------------------------- timing
def time_steps(cfg: Config, peer: str | None, log) -> list:
    """Milliseconds per training step of a single model at batch ``cfg.batch`` on N -> 8gaussians.

    Ours: lfm_core.training.train_cfm (the Trainer) as configured for the table, and variants of OT-CFM. Peer:
    a plain AdamW loop (same data draws, network, optimiser) with torchcfm's matcher in place of our coupling
    and path. Each figure is the median over 3 interleaved repetitions of ``timing_steps`` steps after 10
    warm-up steps.
    """
    src = gaussian
    tgt = lambda n, g: toy.sample("8gaussians", n, generator=g)  # noqa: E731

    def ours(method, coupling_kwargs=None, prefetch=None):
        path, coupling, kwargs = method_spec(method, cfg)
        if coupling_kwargs is not None:
            kwargs = coupling_kwargs
        prefetch = cfg.workers if prefetch is None else prefetch

        def run(n):
            torch.manual_seed(0)
            model = nets.MLP(2)
            marks = {}

            def clock(step, loss):
                if step in (10, n + 10):
                    marks[step] = time.perf_counter()

            training.train_cfm(model, path, src, tgt, steps=n + 10, batch_size=cfg.batch, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, coupling=coupling, coupling_kwargs=kwargs,
                               prefetch=prefetch if coupling != "independent" else 0, progress=False, callback=clock)
            return (marks[n + 10] - marks[10]) / n * 1e3

        return run

    def theirs(method):
        def run(n):
            torch.manual_seed(0)
            np.random.seed(0)  # noqa: NPY002 - torchcfm samples from numpy's global generator
            matcher = peer_matcher(method, cfg)
            model = nets.MLP(2)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            g = torch.Generator().manual_seed(0)
            for k in range(n + 10):
                if k == 10:
                    t0 = time.perf_counter()
                x0, x1 = src(cfg.batch, g), tgt(cfg.batch, g)
                t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
                loss = (model(xt, t) - ut).pow(2).sum(-1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return (time.perf_counter() - t0) / n * 1e3

        return run

    cases = []
    for method in ["I-CFM", "OT-CFM", "SB-CFM", "FM"]:
        if method in cfg.methods:
            cases.append((method, "lfm_core (table setting)", ours(method)))
            if peer:
                cases.append((method, peer, theirs(method)))
    if "OT-CFM" in cfg.methods:
        cases += [
            ("OT-CFM", f"lfm_core, full {cfg.batch} plan, no prefetch", ours("OT-CFM", {}, 0)),
            ("OT-CFM", f"lfm_core, full {cfg.batch} plan, prefetch", ours("OT-CFM", {})),
            ("OT-CFM", f"lfm_core, blocks of {cfg.ot_block}, no prefetch", ours("OT-CFM", None, 0)),
        ]
    results = {i: [] for i in range(len(cases))}
    for _ in range(3):
        for i, (_, _, fn) in enumerate(cases):
            results[i].append(fn(cfg.timing_steps))
    out = []
    for i, (method, impl, _) in enumerate(cases):
        ms = statistics.median(results[i])
        out.append({"method": method, "impl": impl, "ms_per_step": ms})
        log(f"  {method:7s} {impl:40s} {ms:7.2f} ms/step")
    return out


# ------------------------------------------------------------------------------------- report
def w2_key(cfg: Config) -> str:
    """The table's W2: after ``cfg.euler_steps`` Euler steps (compare.evaluate's key)."""
    return f"W2@{cfg.euler_steps}"


def summarise(rows: list, cfg: Config) -> dict:
    groups = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], r["impl"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {m: (statistics.mean(r[m] for r in rs), statistics.stdev(r[m] for r in rs) if len(rs) > 1 else 0.0)
                    for m in (w2_key(cfg), "NPE")}
    return out


def fmt(ms):
    return f"{ms[0]:.3f} ± {ms[1]:.3f}"


def report(data: dict) -> list[str]:
    """The report's lines from the saved measurements (``data``, as written to the JSON)."""
    cfg, rows, timing, peer = Config(**data["config"]), data["rows"], data["timing"], data["peer"]
    summ = summarise(rows, cfg)
    lines = [
        "# OT-CFM 2D table: W2 and NPE",
        "",
        data["produced_by"],
        "",
        "Mean ± standard deviation over seeds " + ", ".join(map(str, cfg.seeds)) + f". {w2_key(cfg)}: exact "
        f"2-Wasserstein distance between {cfg.n_test} points generated by {cfg.euler_steps} Euler steps and "
        f"{cfg.n_test} held-out target points (lower is better). NPE: normalised path energy of those Euler "
        "trajectories, |PE - W2²(q0, q1)| / W2²(q0, q1) (0 for the OT flow).",
        "",
        "## Settings",
        "",
        "| setting | value | the paper's code |",
        "|---|---|---|",
        "| network | MLP 3 x 64, SELU, time appended | same |",
        f"| optimiser | AdamW, lr {cfg.lr}, weight decay {cfg.weight_decay}, constant | same |",
        f"| batch, data | {cfg.batch}; {cfg.n_train} / {cfg.n_val} / {cfg.n_test} train / val / test | same |",
        f"| training length | {cfg.steps} steps ({cfg.steps * cfg.batch / cfg.n_train:.0f} epochs), final model "
        "| 1000 epochs (~19.5k steps), best validation checkpoint |",
        f"| sigma | {cfg.sigma} (SB-CFM: {cfg.sb_sigma}, Sinkhorn reg {2 * cfg.sb_sigma**2}) | same |",
        f"| OT-CFM coupling | permutation from exact plans on random blocks of {cfg.ot_block or cfg.batch} | "
        "512 pairs sampled with replacement from the full plan |",
        f"| SB-CFM coupling | permutation drawn from the entropic plan on blocks of {cfg.sb_block or cfg.batch}, "
        f"Sinkhorn to a relative marginal error of {cfg.sb_tol} | 512 pairs sampled with replacement |",
        f"| evaluation | {cfg.euler_steps} Euler steps from the test sources | same |",
        "",
        "## Results (lfm_core)",
        "",
    ]
    for metric in (w2_key(cfg), "NPE"):
        lines += [f"### {metric}", "", "| method | " + " | ".join(cfg.tasks) + " |",
                  "|---|" + "---|" * len(cfg.tasks)]
        for method in cfg.methods:
            cells = []
            for task in cfg.tasks:
                v = summ.get((task, method, "lfm_core"))
                paper = PAPER.get((task, method, metric))
                cell = fmt(v[metric]) if v else "n/a"
                if paper is not None:
                    cell += f" (paper {paper})"
                cells.append(cell)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Paper values in parentheses: {PAPER_SOURCE}. FM is n/a on moons -> 8gaussians: Lipman's path "
              "needs a standard normal source.", ""]
    if peer:
        lines += [f"## Side by side with {peer} (same data, network, seeds and step budget, same process)", "",
                  "| task | method | W2 lfm_core | W2 " + peer + " | NPE lfm_core | NPE " + peer + " |",
                  "|---|---|---|---|---|---|"]
        for task in cfg.tasks:
            for method in PEER_METHODS:
                a, b = summ.get((task, method, "lfm_core")), summ.get((task, method, peer))
                if a and b:
                    lines.append(f"| {task} | {method} | {fmt(a[w2_key(cfg)])} | {fmt(b[w2_key(cfg)])} | "
                                 f"{fmt(a['NPE'])} | {fmt(b['NPE'])} |")
        lines.append("")
    if timing:
        lines += ["## Milliseconds per training step (one model, batch "
                  f"{cfg.batch}, N -> 8gaussians; median of 3 x {cfg.timing_steps} steps)", "",
                  "| method | implementation | ms / step |" + (f" ratio to {peer} |" if peer else ""),
                  "|---|---|---|" + ("---|" if peer else "")]
        peer_ms = {t["method"]: t["ms_per_step"] for t in timing if t["impl"] == peer}
        for t in timing:
            ratio = f" {t['ms_per_step'] / peer_ms[t['method']]:.2f} |" if t["method"] in peer_ms else " - |"
            lines.append(f"| {t['method']} | {t['impl']} | {t['ms_per_step']:.2f} |" + (ratio if peer else ""))
        lines.append("")
    return lines


def plot(data: dict):
    """W2 and NPE per task and method (mean and standard deviation over seeds), as bars."""
    cfg, peer = Config(**data["config"]), data["peer"]
    summ = summarise(data["rows"], cfg)
    plt = common.pyplot()
    impls = ["lfm_core"] + ([peer] if peer else [])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    width = 0.8 / (len(cfg.methods) * len(impls))
    for ax, metric in zip(axes, (w2_key(cfg), "NPE"), strict=True):
        k = 0
        for method in cfg.methods:
            for impl in impls:
                xs, ys, es = [], [], []
                for ti, task in enumerate(cfg.tasks):
                    v = summ.get((task, method, impl))
                    if v:
                        xs.append(ti + k * width)
                        ys.append(v[metric][0])
                        es.append(v[metric][1])
                if xs:
                    ax.bar(xs, ys, width, yerr=es, label=f"{method}" + ("" if impl == "lfm_core" else f" ({impl})"),
                           hatch="//" if impl != "lfm_core" else None, alpha=0.85)
                k += 1
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cfg.tasks))])
        ax.set_xticklabels(cfg.tasks, fontsize=8)
        ax.set_title(f"{metric} (mean ± std over {len(cfg.seeds)} seeds; lower is better)")
        if metric == "NPE":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7, ncol=2)
    return fig


def main(argv=None) -> int:
    p = common.parser(__doc__, quick="a small, fast run (2 seeds, short training, small sets)")
    p.add_argument("--peer", choices=["torchcfm"], help="also run torchcfm's matchers on the same tasks")
    p.add_argument("--steps", type=common.number(int, minimum=1))
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS))
    p.add_argument("--methods", nargs="+", choices=METHODS)
    p.add_argument("--ot-block", type=common.number(int, minimum=0), help="OT-CFM block size (0: the whole batch)")
    p.add_argument("--sb-block", type=common.number(int, minimum=0), help="SB-CFM block size (0: the whole batch)")
    p.add_argument("--sb-tol", type=common.number(float, above=0))
    p.add_argument("--workers", type=common.number(int, minimum=0))
    p.add_argument("--threads", type=common.number(int, minimum=1),
                   help="torch intra-op threads while training the table (default 1)")
    p.add_argument("--no-timing", action="store_true")
    args = p.parse_args(argv)
    if args.report_only:
        data = common.load(args.report_only, p, keys=("config", "peer", "command", "rows", "timing"))
        md = common.save(args.report_only.parent, args.report_only.stem, report(data), figure=plot(data))
        print(f"rewrote {md} from {args.report_only}")
        return 0
    cfg = Config()
    if args.quick:
        cfg = Config(seeds=[42, 43], steps=60, batch=128, n_train=512, n_val=64, n_test=128, euler_steps=20,
                     ot_block=64, timing_steps=10)
    common.override(cfg, args, ("steps", "seeds", "tasks", "methods", "sb_tol", "workers", "threads"))
    for name in ("ot_block", "sb_block"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name) or None)
    if "2-RF" in cfg.methods and "I-CFM" not in cfg.methods:
        p.error("2-RF reflows the I-CFM model: include I-CFM in --methods")
    if args.peer:
        try:
            import torchcfm  # noqa: F401
        except ImportError:
            p.error("--peer torchcfm needs the torchcfm package: `python3 tasks.py peer` installs it (with "
                    "`pip install --no-deps torchcfm`, because its torchdyn dependency would replace torch)")
    warnings.filterwarnings("ignore", message="Sinkhorn did not converge")
    command, log = common.command(__file__, argv), common.log
    log(f"config: {asdict(cfg)}")
    start = time.perf_counter()
    log("training and evaluating ...")
    default_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # measured faster on 2 cores: the coupling threads get the other one
    try:
        rows = run_table(cfg, args.peer, log)
    finally:
        torch.set_num_threads(default_threads)
    timing = []
    if not args.no_timing:
        log(f"timing one training step (torch's default {default_threads} threads) ...")
        timing = time_steps(cfg, args.peer, log)
    wall = time.perf_counter() - start
    machine = common.machine()
    header = common.produced_by(command, machine["host"], [
        machine["processor"], f"torch {torch.__version__}", f"{cfg.threads} torch thread(s) for training",
        f"{torch.get_num_threads()} for the timing"], wall / 60)
    summ = summarise(rows, cfg)
    data = {"config": asdict(cfg), "peer": args.peer, "wall_seconds": wall, "command": command,
            "produced_by": header, "torch": torch.__version__, "rows": rows, "timing": timing,
            "summary": [{"task": k[0], "method": k[1], "impl": k[2], **{m: {"mean": v[m][0], "std": v[m][1]}
                                                                       for m in v}} for k, v in summ.items()],
            "paper": [{"task": k[0], "method": k[1], "metric": k[2], "value": v} for k, v in PAPER.items()],
            "paper_source": PAPER_SOURCE}
    stem = "ot_cfm_2d" + ("_quick" if args.quick else "") + (f"_vs_{args.peer}" if args.peer else "")
    md = common.save(args.out, stem, report(data), data, plot(data))
    log(f"wrote {md} (and .json, .png) in {wall / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
