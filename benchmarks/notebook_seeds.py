#!/usr/bin/env python3
"""Every comparison a notebook asserts, measured over training and sampling seeds, with its margin.

    python benchmarks/notebook_seeds.py                       # notebooks 01-07, seeds 0 1 2 -> benchmarks/results/
    python benchmarks/notebook_seeds.py 04 05 --seeds 1 2     # some notebooks, some seeds
    python benchmarks/notebook_seeds.py 02 --merge            # rerun one notebook into the saved results
    python benchmarks/notebook_seeds.py --report-only benchmarks/results/notebook_seeds.json

A notebook states its claims as ``assert`` statements that compare two numbers (``assert a < 0.5 * b``). This
script runs each notebook in quick mode once per seed (``LFM_SEED``: every seed of the notebook is ``SEED + k``,
data splits stay fixed; the networks of notebooks 04 and 05 that quick mode normally loads are seed 0's, so with
another seed they are trained from scratch for their pretraining length, :mod:`lfm_core.pretrained`). Before it
runs a cell, every such assert in it is rewritten to record both sides first, so each comparison is measured
each time it runs (in a loop: once per pass), even where it then fails.

The margin of ``a < b`` (or ``<=``) is ``(b - a) / |b|``; of ``a > b``, ``(a - b) / |b|``: the fraction by which
the claim holds (negative: it failed). The report lists, per notebook, each comparison's values per seed and its
smallest margin over the seeds, smallest first, so that the claims nearest to failing are read first. Asserts
that are not comparisons of numbers (``torch.allclose``, ``all(...)``) count in a seed's pass or failure only.
"""

from __future__ import annotations

import ast
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: flags, command line, report files)

sys.path.insert(0, str(common.ROOT / "scripts"))
import run_notebooks  # noqa: E402  (how the project finds and executes notebooks: the error line, the machine)

OPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}

# runs in the kernel before the notebook's first cell: appends one JSON line per recorded comparison
_RECORDER = '''
def _lfm_record(claim, sides):
    import json as _json
    out = []
    for left, op, right in sides:
        try:
            out.append([float(left), op, float(right)])
        except (TypeError, ValueError, RuntimeError):
            out.append(None)
    with open({path!r}, "a") as _f:
        _f.write(_json.dumps({{"claim": claim, "sides": out}}) + "\\n")
'''


def _comparisons(test: ast.expr) -> list[tuple[ast.expr, str, ast.expr]] | None:
    """The (left, op, right) pairs an assert's test is made of (``a < b``, ``a < b < c``, ``x and y``), or None."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        parts = [_comparisons(v) for v in test.values]
        return None if any(p is None for p in parts) else [c for p in parts for c in p]
    if isinstance(test, ast.Compare) and all(type(op) in OPS for op in test.ops):
        operands = [test.left, *test.comparators]
        return [(operands[i], OPS[type(op)], operands[i + 1]) for i, op in enumerate(test.ops)]
    return None


class _Instrument(ast.NodeTransformer):
    """Puts ``_lfm_record(<claim id>, [(left, op, right), ...])`` before every assert that compares numbers."""

    def __init__(self, cell: int):
        self.cell, self.count, self.claims = cell, 0, {}

    def visit_Assert(self, node: ast.Assert):
        sides = _comparisons(node.test)
        if sides is None:
            return node
        self.count += 1
        claim = f"cell {self.cell}, assert {self.count}"
        self.claims[claim] = ast.unparse(node.test)
        triples = ast.List(elts=[ast.Tuple(elts=[left, ast.Constant(op), right], ctx=ast.Load())
                                 for left, op, right in sides], ctx=ast.Load())
        call = ast.Expr(ast.Call(ast.Name("_lfm_record", ast.Load()), [ast.Constant(claim), triples], []))
        return [ast.copy_location(call, node), node]


def instrument(source: str, cell: int) -> tuple[str, dict]:
    """``source`` with its numeric asserts recording their sides, and claim id -> the assert's test as text.

    Cells that are not plain Python (IPython magics, shell escapes) or hold no such assert come back unchanged.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source, {}
    visitor = _Instrument(cell)
    tree = visitor.visit(tree)
    if not visitor.claims:
        return source, {}
    return ast.unparse(ast.fix_missing_locations(tree)), visitor.claims


def margin(left: float, op: str, right: float) -> float:
    """The fraction by which ``left op right`` holds (negative when it does not)."""
    slack = right - left if op in ("<", "<=") else left - right
    return slack / abs(right) if right != 0 else (float("inf") if slack > 0 else float("-inf") if slack < 0 else 0.0)


def run_notebook(path: Path, seed: int, timeout: int) -> dict:
    """Execute ``path`` in quick mode with ``LFM_SEED=seed`` and its asserts instrumented; what it measured."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    claims = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.source, found = instrument(cell.source, i)
            claims.update(found)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "claims.jsonl"
        nb.cells.insert(0, nbformat.v4.new_code_cell(_RECORDER.format(path=str(log))))
        env = {"LFM_MODE": "quick", "LFM_SEED": str(seed), "LFM_PROGRESS": "0"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        start, error = time.perf_counter(), None
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        except CellExecutionError as exc:
            error = run_notebooks.error_line(exc)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        seconds = time.perf_counter() - start
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    measured: dict = {}
    for rec in records:
        measured.setdefault(rec["claim"], []).append(rec["sides"])
    return {"seed": seed, "seconds": round(seconds, 1), "error": error, "claims": claims, "measured": measured}


def summarise(runs: list[dict]) -> dict:
    """Per notebook: each comparison (claim, pass through it, side) with its values per seed and smallest margin."""
    out: dict = {}
    most: dict = {}  # (notebook, claim) -> the most passes any seed made through it
    for run in runs:
        for claim, passes in run["measured"].items():
            most[run["notebook"], claim] = max(most.get((run["notebook"], claim), 0), len(passes))
    for run in runs:
        nb = out.setdefault(run["notebook"], {"seeds": {}, "comparisons": {}})
        nb["seeds"][str(run["seed"])] = {"seconds": run["seconds"], "error": run["error"]}
        for claim, passes in run["measured"].items():
            for k, sides in enumerate(passes):
                for j, side in enumerate(sides):
                    key = f"{claim}" + (f", pass {k + 1}" if most[run["notebook"], claim] > 1 else "") + \
                          (f", part {j + 1}" if len(sides) > 1 else "")
                    row = nb["comparisons"].setdefault(key, {"assert": run["claims"][claim], "values": {}})
                    if side is not None:
                        left, op, right = side
                        row["op"] = op
                        row["values"][str(run["seed"])] = [left, right, margin(left, op, right)]
    for nb in out.values():
        for row in nb["comparisons"].values():
            margins = [v[2] for v in row["values"].values()]
            row["min_margin"] = min(margins) if margins else None
    return out


def merge(old: dict, new: dict) -> dict:
    """``old`` saved results with the runs of ``new``'s notebooks replaced by ``new``'s, and both commands."""
    rerun = {r["notebook"] for r in new["runs"]}
    runs = sorted([r for r in old["runs"] if r["notebook"] not in rerun] + new["runs"],
                  key=lambda r: (r["notebook"], r["seed"]))
    return {"commands": old["commands"] + new["commands"], "seeds": sorted(set(old["seeds"]) | set(new["seeds"])),
            "torch": new["torch"], "results": summarise(runs), "runs": runs}


def report(data: dict) -> str:
    seeds = data["seeds"]
    lines = ["# Notebook claims over seeds", "",
             "; ".join(f"`{c['command']}` on {c['machine']}, {c['date']}" for c in data["commands"])
             + f"; quick mode, torch {data['torch']}.", "",
             "Every `assert` of a notebook that compares two numbers, measured once per seed (`LFM_SEED`; every seed "
             "of the notebook is `SEED + k`, data splits fixed; notebooks 04 and 05 train from scratch for their "
             "pretraining length with a seed other than 0, and continue their stored seed-0 networks with seed 0). "
             "Margin of `a < b`: `(b - a) / |b|`; of `a > b`: `(a - b) / |b|`; negative: the claim failed. Rows are "
             "sorted by their smallest margin over the seeds; a comparison inside a loop has one row per pass. "
             "The slack is the margin before dividing by `|b|` (`b - a` or `a - b`), in the units of the claim.", ""]
    for name, nb in data["results"].items():
        status = ", ".join(f"seed {s}: {'passed' if not r['error'] else 'FAILED (' + r['error'][:120] + ')'} "
                           f"in {r['seconds']:.0f} s" for s, r in nb["seeds"].items())
        lines += [f"## {name}", "", status, ""]
        rows = sorted(nb["comparisons"].items(),
                      key=lambda kv: float("inf") if kv[1]["min_margin"] is None else kv[1]["min_margin"])
        head = ("| where | assert | " + " | ".join(f"seed {s}: a, b" for s in seeds)
                + " | smallest slack | smallest margin |")
        lines += [head, "|" + "---|" * (len(seeds) + 4)]
        for key, row in rows:
            cells = []
            for s in seeds:
                v = row["values"].get(str(s))
                cells.append("—" if v is None else f"{v[0]:.4g}, {v[1]:.4g}")
            m = row["min_margin"]
            slack = min((b - a if row["op"] in ("<", "<=") else a - b for a, b, _ in row["values"].values()),
                        default=None)
            text = row["assert"].replace("|", "\\|")
            text = text if len(text) <= 90 else text[:87] + "..."
            lines.append(f"| {key} | `{text}` | " + " | ".join(cells) +
                         f" | {'—' if slack is None else f'{slack:+.4g}'} | {'—' if m is None else f'{m:+.1%}'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = common.parser(__doc__, quick=None)
    parser.add_argument("notebooks", nargs="*", help="only the notebooks whose file name contains one of these")
    parser.add_argument("--seeds", type=common.number(int, minimum=0), nargs="+", default=[0, 1, 2])
    parser.add_argument("--timeout", type=common.number(int, minimum=1), default=1800,
                        help="per-cell timeout in seconds")
    parser.add_argument("--merge", action="store_true",
                        help="replace these notebooks' runs in OUT/notebook_seeds.json, keeping the others")
    args = parser.parse_args(argv)
    if args.report_only is not None:
        data = common.load(args.report_only, parser, keys=("commands", "seeds", "torch", "results"))
        common.save(args.report_only.parent, args.report_only.stem, [report(data)])
        print(report(data))
        return 0
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    try:
        paths = run_notebooks.find_notebooks(args.notebooks)
    except ValueError as exc:
        parser.error(str(exc))
    import torch

    runs = []
    for path in paths:
        for seed in args.seeds:
            common.log(f"{path.name}, seed {seed} ...")
            run = dict(run_notebook(path, seed, args.timeout), notebook=path.name)
            runs.append(run)
            n = sum(len(v) for v in run["measured"].values())
            common.log(f"  {'FAILED: ' + run['error'] if run['error'] else 'passed'}; {run['seconds']} s; "
                       f"{n} asserts measured")
    command = {"command": common.command(__file__, [*args.notebooks, "--seeds", *map(str, args.seeds)]
                                         + (["--merge"] if args.merge else [])),
               "date": datetime.date.today().isoformat(),
               "machine": f"{run_notebooks.machine()} ({common.machine()['arch']})"}
    stem = "notebook_seeds" if not args.notebooks or args.merge else "notebook_seeds_" + "_".join(args.notebooks)
    data = {"commands": [command], "seeds": list(args.seeds), "torch": torch.__version__,
            "results": summarise(runs), "runs": runs}
    if args.merge and (args.out / f"{stem}.json").is_file():
        data = merge(json.loads((args.out / f"{stem}.json").read_text()), data)
    common.save(args.out, stem, [report(data)], data)
    print(report(data))
    print(f"wrote {args.out / (stem + '.json')} and .md")
    return 1 if any(r["error"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
