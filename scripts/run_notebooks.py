#!/usr/bin/env python3
"""Execute the notebooks headless and write them, their figures and their timings under build/.

    python scripts/run_notebooks.py --out build [--memory] [--record] [--slow SECONDS] [NAME ...]

For each ``notebooks/NN_topic.ipynb`` (or those whose name contains one of the NAMEs, :func:`find_notebooks`):
executes it in the current environment (mode from ``LFM_MODE``), writes the executed notebook to
``build/notebooks/``, every PNG figure it shows to ``build/figures/NN_topic/``, and a summary of
wall times against each notebook's budget (``metadata.lfm.quick_budget_s``) to
``build/summary.json``; with ``--memory``, also the kernel's peak resident memory (Linux: the ``VmHWM``
high-water mark of ``/proc/<pid>/status``, read every 0.2 s while the notebook runs). Each code cell that takes
``--slow`` seconds or more (default 20) prints a line as it finishes. Exits non-zero if a notebook fails; a budget
overrun is reported, not fatal.

Without ``--record`` nothing outside ``--out`` is written. With it, each notebook that passed gets its time
written into its own metadata (``metadata.lfm.runtime.<quick|full|rehearsal>``: seconds, machine, date; the
rehearsal also its peak memory), and the README's runtime table, between ``<!-- runtimes:begin -->`` and
``<!-- runtimes:end -->``, is rebuilt from the metadata of all notebooks (``runtime_table``). The metadata is the
one place measured notebook times live; ``tests/test_project.py`` checks that the README agrees with it.
Usually run through ``python3 tasks.py run`` (``--record`` passed on).

Importing this module needs the standard library only (``tasks.py`` finds notebooks and rebuilds the README's
table with it before any virtual environment exists); executing notebooks needs ``nbclient`` and ``lfm_core``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"   # the course: NN_topic.ipynb
README = ROOT / "README.md"


def find_notebooks(names=(), folder: Path | None = None) -> list[Path]:
    """The notebooks ``folder/NN_*.ipynb`` (default :data:`NOTEBOOKS`) in order; with ``names``, those whose file
    name contains one of them. A name that matches no notebook is a ``ValueError`` listing the notebooks."""
    if isinstance(names, str):
        raise TypeError(f"names must be a list of strings, got the string {names!r}")
    folder = NOTEBOOKS if folder is None else Path(folder)
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    unmatched = [n for n in names if not any(n in p.name for p in paths)]
    if unmatched:
        raise ValueError(f"no notebook matches {', '.join(map(repr, unmatched))}; the notebooks are: "
                         + ", ".join(p.stem for p in paths))
    return [p for p in paths if any(n in p.name for n in names)] if names else paths


def peak_rss_mib(pid: int) -> float | None:
    """The peak resident memory of process ``pid`` so far (Linux ``VmHWM``), in MiB; None where not readable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class KernelMemory(threading.Thread):
    """Follows the peak resident memory of ``client``'s kernel (nbclient) while it runs (VmHWM only grows)."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.client, self.peak, self.done = client, None, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            provisioner = getattr(getattr(self.client, "km", None), "provisioner", None)
            pid = getattr(provisioner, "pid", None)
            value = peak_rss_mib(pid) if pid else None
            if value is not None:
                self.peak = max(self.peak or 0.0, value)


def error_line(exc: Exception) -> str:
    """The last line of a failed cell's error (``AssertionError: ...``), without terminal colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[-1] if text else repr(exc)


def execute(path: Path, out: Path, timeout: int, memory: bool = False, slow_s: float = 20.0) -> dict:
    """Execute the notebook at ``path`` (see the module's docstring); each code cell that takes ``slow_s`` seconds or
    more prints a line as it finishes."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    n_code = sum(cell.cell_type == "code" and bool(cell.source.strip()) for cell in nb.cells)   # those nbclient runs
    started = {}   # code cell index -> when it started (nbclient calls on_cell_execute for the cells it runs)

    def cell_started(cell, cell_index, **_):
        started[cell_index] = time.perf_counter()

    def cell_executed(cell, cell_index, **_):   # a long run shows where it is (the cells that finished)
        seconds = time.perf_counter() - started[cell_index]
        if seconds >= slow_s:
            print(f"    cell {cell_index} (code cell {len(started)} of {n_code}): {seconds:.1f} s, done at "
                  f"{datetime.datetime.now():%H:%M:%S}", flush=True)

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            on_cell_execute=cell_started, on_cell_executed=cell_executed)
    watcher = KernelMemory(client) if memory else None
    if watcher is not None:
        watcher.start()
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as exc:
        error = error_line(exc)
    finally:
        if watcher is not None:
            watcher.done.set()
            watcher.join()
    seconds = time.perf_counter() - start
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / "notebooks" / path.name)
    fig_dir = out / "figures" / path.stem
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()
    n_fig = 0
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                n_fig += 1
                (fig_dir / f"cell{i:02d}_fig{n_fig:02d}.png").write_bytes(base64.b64decode(data["image/png"]))
    mode = run_mode()
    budget = nb.metadata.get("lfm", {}).get(f"{mode}_budget_s")
    return {"notebook": path.name, "mode": mode, "seconds": round(seconds, 1), "budget_s": budget,
            "within_budget": None if budget is None else seconds <= budget, "figures": n_fig, "error": error,
            **({"peak_rss_mib": None if watcher.peak is None else round(watcher.peak)} if memory else {})}


MODES = ("quick", "full", "rehearsal")
TABLE_BEGIN, TABLE_END = "<!-- runtimes:begin -->", "<!-- runtimes:end -->"


def run_mode() -> str:
    """The mode this process runs notebooks in (``LFM_MODE``, read by :func:`lfm_core.runtime.mode`)."""
    from lfm_core import runtime

    return runtime.mode()


def _pretraining() -> bool:
    from lfm_core import runtime

    return runtime.mode_setting() == "pretrain"


def machine() -> str:
    """A short description of this machine: usable CPU cores and, where torch sees one, the GPU."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    text = f"{cores} CPU cores"
    try:
        import torch
        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def record(path: Path, result: dict, mode: str, when: datetime.date | None = None) -> None:
    """Write ``result``'s time (and peak memory, when measured) into ``path``'s ``metadata.lfm.runtime[mode]``.

    Only the metadata changes: the file is rewritten with the layout the notebooks are committed in."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if result.get("error"):
        raise ValueError(f"{path.name} failed ({result['error']}); a failed run is not recorded")
    nb = json.loads(path.read_text())
    entry = {"seconds": result["seconds"], "machine": machine(),
             "date": (when or datetime.date.today()).isoformat()}
    if result.get("peak_rss_mib") is not None:
        entry["peak_rss_mib"] = result["peak_rss_mib"]
    nb.setdefault("metadata", {}).setdefault("lfm", {}).setdefault("runtime", {})[mode] = entry
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _cell(entry: dict | None, budget: float | None = None) -> str:
    if not entry:
        return "not measured"
    text = _duration(entry["seconds"])
    if budget is not None:
        text += f" (budget {_duration(budget)}{', over' if entry['seconds'] > budget else ''})"
    text += f"; {entry['machine']}, {entry['date']}"
    if entry.get("peak_rss_mib") is not None:
        text += f"; peak memory {entry['peak_rss_mib']} MiB"
    return text


def runtime_table(notebooks: Path | None = None) -> str:
    """The README's runtime table, built from every notebook's ``metadata.lfm`` (``runtime``, ``quick_budget_s``,
    and ``full_note``: what full mode does beyond the measured configuration)."""
    rows = ["| notebook | quick mode (budget) | full mode | full-mode rehearsal on local stand-ins |",
            "|---|---|---|---|"]
    for path in find_notebooks(folder=notebooks):
        meta = json.loads(path.read_text()).get("metadata", {}).get("lfm", {})
        runs = meta.get("runtime", {})
        full = _cell(runs.get("full"))
        if meta.get("full_note"):
            full += f". {meta['full_note']}"
        rehearsal = _cell(runs.get("rehearsal")) if "rehearsal" in runs else "–"
        rows.append(f"| {path.stem[:2]} | {_cell(runs.get('quick'), meta.get('quick_budget_s'))} | {full} | "
                    f"{rehearsal} |")
    return "\n".join(rows)


def update_readme(readme: Path | None = None, notebooks: Path | None = None) -> bool:
    """Rebuild the runtime table between the README's markers (default :data:`README`, from the notebooks in
    ``notebooks``, default :data:`NOTEBOOKS`); True when the README changed."""
    readme = README if readme is None else readme
    text = readme.read_text()
    if text.count(TABLE_BEGIN) != 1 or text.count(TABLE_END) != 1:
        raise ValueError(f"{readme} needs exactly one {TABLE_BEGIN} ... {TABLE_END} block")
    head, rest = text.split(TABLE_BEGIN)
    _, tail = rest.split(TABLE_END)
    new = f"{head}{TABLE_BEGIN}\n{runtime_table(notebooks)}\n{TABLE_END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only notebooks whose file name contains one of these")
    parser.add_argument("--out", type=Path, default=ROOT / "build")
    parser.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds")
    parser.add_argument("--slow", type=float, default=20.0,
                        help="print a line for each code cell that takes this many seconds or more (default 20)")
    parser.add_argument("--memory", action="store_true", help="record each kernel's peak resident memory (Linux)")
    parser.add_argument("--record", action="store_true",
                        help="write each passing notebook's time into its metadata and rebuild the README's table")
    args = parser.parse_args(argv)
    try:
        paths = find_notebooks(args.names)
        mode, pretraining = run_mode(), _pretraining()   # a bad LFM_MODE stops here, before any notebook runs
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.record and pretraining:
        print("--record: a pretraining run (LFM_MODE=pretrain) is not a quick-mode measurement", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for p in paths:
        print(f"executing {p.name} ...", flush=True)
        r = execute(p, args.out, args.timeout, memory=args.memory, slow_s=args.slow)
        results.append(r)
        budget = f" (budget {r['budget_s']} s{'' if r['within_budget'] else ', OVER BUDGET'})" if r["budget_s"] else ""
        status = "FAILED: " + r["error"] if r["error"] else "ok"
        peak = f"; peak memory {r['peak_rss_mib']} MiB" if r.get("peak_rss_mib") else ""
        print(f"  {status}; {r['seconds']} s{budget}; {r['figures']} figures{peak}", flush=True)
    (args.out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out / 'notebooks'}, {args.out / 'figures'} and {args.out / 'summary.json'}")
    if args.record:
        for p, r in zip(paths, results, strict=True):
            if not r["error"]:
                record(p, r, mode)
        if update_readme():
            print("recorded the times in the notebooks' metadata and rebuilt the README's runtime table")
    return 1 if any(r["error"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
