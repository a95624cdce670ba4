#!/usr/bin/env python3
"""Execute the notebooks headless and write them, their figures and their timings under build/.

    python scripts/run_notebooks.py --out build [--memory] [NAME ...]

For each ``notebooks/NN_topic.ipynb`` (or those whose name contains one of the NAMEs):
executes it in the current environment (mode from ``LFM_QUICK``), writes the executed notebook to
``build/notebooks/``, every PNG figure it shows to ``build/figures/NN_topic/``, and a summary of
wall times against each notebook's budget (``metadata.lfm.quick_budget_s``) to
``build/summary.json``; with ``--memory``, also the kernel's peak resident memory (Linux: the ``VmHWM``
high-water mark of ``/proc/<pid>/status``, read every 0.2 s while the notebook runs). Exits non-zero if a
notebook fails; a budget overrun is reported, not fatal.
Usually run through ``python3 tasks.py run``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]


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
    """Follows the peak resident memory of ``client``'s kernel while it runs (VmHWM only grows)."""

    def __init__(self, client: NotebookClient):
        super().__init__(daemon=True)
        self.client, self.peak, self.done = client, None, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            provisioner = getattr(getattr(self.client, "km", None), "provisioner", None)
            pid = getattr(provisioner, "pid", None)
            value = peak_rss_mib(pid) if pid else None
            if value is not None:
                self.peak = max(self.peak or 0.0, value)


def execute(path: Path, out: Path, timeout: int, memory: bool = False) -> dict:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    watcher = KernelMemory(client) if memory else None
    if watcher is not None:
        watcher.start()
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # drop terminal colours
        error = text.splitlines()[-1] if text else repr(exc)
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
    mode = "quick" if os.environ.get("LFM_QUICK", "0") not in ("", "0", "false", "no", "off") else "full"
    budget = nb.metadata.get("lfm", {}).get(f"{mode}_budget_s")
    return {"notebook": path.name, "mode": mode, "seconds": round(seconds, 1), "budget_s": budget,
            "within_budget": None if budget is None else seconds <= budget, "figures": n_fig, "error": error,
            **({"peak_rss_mib": None if watcher.peak is None else round(watcher.peak)} if memory else {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only notebooks whose file name contains one of these")
    parser.add_argument("--out", type=Path, default=ROOT / "build")
    parser.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds")
    parser.add_argument("--memory", action="store_true", help="record each kernel's peak resident memory (Linux)")
    args = parser.parse_args()
    paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.names:
        paths = [p for p in paths if any(n in p.name for n in args.names)]
    if not paths:
        print("no notebook matched", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for p in paths:
        print(f"executing {p.name} ...", flush=True)
        r = execute(p, args.out, args.timeout, memory=args.memory)
        results.append(r)
        budget = f" (budget {r['budget_s']} s{'' if r['within_budget'] else ', OVER BUDGET'})" if r["budget_s"] else ""
        status = "FAILED: " + r["error"] if r["error"] else "ok"
        peak = f"; peak memory {r['peak_rss_mib']} MiB" if r.get("peak_rss_mib") else ""
        print(f"  {status}; {r['seconds']} s{budget}; {r['figures']} figures{peak}", flush=True)
    (args.out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out / 'notebooks'}, {args.out / 'figures'} and {args.out / 'summary.json'}")
    return 1 if any(r["error"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
