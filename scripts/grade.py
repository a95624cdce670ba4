#!/usr/bin/env python3
"""Grade submitted notebooks: run each headless in quick mode and score every exercise by its check cells.

    python3 tasks.py grade NOTEBOOK.ipynb [...]       # or: python scripts/grade.py NOTEBOOK.ipynb [...]

An exercise of a notebook is a code cell whose first line is ``# Exercise N`` (its solution between
``### BEGIN SOLUTION`` and ``### END SOLUTION``, blanked in the student version that ``scripts/make_lab.py``
writes); its check is a later code cell whose first line is ``# Check: exercise N (what it checks)``. Check cells
stay in the student version. The notebook runs from top to bottom with errors allowed, so a wrong or unfinished
exercise costs its own point only; an exercise scores 1 when every one of its check cells ran without an error,
else 0 with the check's error as the reason. Exercises without a check cell (open questions) are not scored.

The check cells that run are the course's own: those of ``--reference`` (an instructor version), by default of the
notebook of the same file name in notebooks/ where there is one, replace the submitted notebook's check cells
exercise by exercise, so an edited check does not change a score (a submitted notebook whose check cells do not
pair up with the reference's is refused).

Prints a line per exercise and a total per notebook. Exit status: 0 when every notebook has full marks, 1 when an
exercise failed, 2 when an argument is not a notebook with check cells (nothing runs then) or a notebook could not
be run to the end (its kernel died or a cell ran out of time). Running needs ``nbclient`` and the project's
environment (``tasks.py grade`` runs this in it); checking the arguments needs the standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

CHECK = re.compile(r"#\s*Check:\s*exercise\s+(\w+)\s*(?:\((.*)\))?\s*$", re.I)
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"   # the instructor versions
CELL_TIMEOUT = 600  # seconds per cell, as `tasks.py test` gives nbval


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _first_line(cell: dict) -> str:
    return _source(cell).lstrip("\n").split("\n", 1)[0].strip()


def check_cells(nb: dict) -> dict[str, list[int]]:
    """The check cells of notebook ``nb`` (its JSON dict): exercise -> indices of its check cells, in order."""
    checks: dict[str, list[int]] = {}
    for i, cell in enumerate(nb.get("cells", [])):
        m = CHECK.match(_first_line(cell)) if cell.get("cell_type") == "code" else None
        if m:
            checks.setdefault(m.group(1), []).append(i)
    return checks


def load(path) -> dict:
    """Notebook ``path`` as a JSON dict, after checking that it is one with check cells to grade.

    Raises ValueError with a message for the user: a missing file, another kind of file, JSON that is no notebook
    (version 4), or a notebook without ``# Check: exercise N`` cells."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a notebook: give the .ipynb file")
    if path.suffix != ".ipynb":
        raise ValueError(f"{path} is not a notebook (a Jupyter notebook's name ends in .ipynb)")
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a notebook: it is not valid JSON ({exc})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or nb.get("nbformat") != 4:
        raise ValueError(f"{path} is not a notebook: a version 4 notebook is a JSON object with nbformat 4 and a "
                         "list of cells")
    if not check_cells(nb):
        raise ValueError(f"{path} has no check cells (code cells starting with '# Check: exercise N'): nothing to "
                         "grade")
    return nb


def default_reference(path) -> Path | None:
    """The instructor version that grades ``path``: notebooks/ holds one of the same file name (not ``path``)."""
    ref = NOTEBOOKS / Path(path).name
    return ref if ref.exists() and ref.resolve() != Path(path).resolve() else None


def with_checks_of(nb: dict, reference: dict, name: str = "the notebook") -> dict:
    """A copy of ``nb`` whose check cells hold the source of ``reference``'s check cells, exercise by exercise.

    Raises ValueError when the two do not have the same exercises with the same number of check cells."""
    mine, theirs = check_cells(nb), check_cells(reference)
    if {k: len(v) for k, v in mine.items()} != {k: len(v) for k, v in theirs.items()}:
        raise ValueError(f"{name}'s check cells (exercises {', '.join(mine) or 'none'}) do not pair up with the "
                         f"reference's (exercises {', '.join(theirs)}): restore the check cells as they were given")
    out = json.loads(json.dumps(nb))
    for exercise, indices in mine.items():
        for i, j in zip(indices, theirs[exercise], strict=True):
            out["cells"][i]["source"] = reference["cells"][j]["source"]
    return out


class Score(NamedTuple):
    """The result of one exercise: 1 or 0 points, what its check compares, and why (or what it printed)."""
    exercise: str
    points: int
    what: str
    reason: str


def _error(cell) -> str | None:
    """``Name: message`` of the error that ``cell`` (executed) raised, without terminal colours, or None."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            text = re.sub(r"\x1b\[[0-9;]*m", "", f"{out.get('ename', 'Error')}: {out.get('evalue', '')}")
            return text.strip().rstrip(":")
    return None


def _last_printed(cell) -> str:
    lines = [ln for out in cell.get("outputs", []) if out.get("output_type") == "stream"
             for ln in "".join(out.get("text", "")).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "passed"


def scores(nb) -> list[Score]:
    """The score of each exercise of ``nb`` (executed, as an nbformat or JSON notebook), in notebook order."""
    out = []
    for exercise, indices in check_cells(nb).items():
        whats = [CHECK.match(_first_line(nb["cells"][i])).group(2) for i in indices]
        reasons = []
        for i in indices:
            cell = nb["cells"][i]
            if cell.get("execution_count") is None and not cell.get("outputs"):
                reasons.append(f"cell {i} did not run")
            elif (err := _error(cell)) is not None:
                if err.startswith("NameError"):
                    err += " (did the exercise's cell above it run without an error?)"
                reasons.append(err)
        reason = "; ".join(reasons) if reasons else _last_printed(nb["cells"][indices[-1]])
        out.append(Score(exercise, int(not reasons), next((w for w in whats if w), ""), reason))
    return out


def execute(nb: dict, folder: Path, timeout: int = CELL_TIMEOUT):
    """Run ``nb`` (a JSON dict) top to bottom in a fresh python3 kernel with errors allowed, in quick mode, from
    ``folder``; returns the executed notebook (nbformat) and the error that stopped it early, or None."""
    import nbformat
    from nbclient import NotebookClient

    os.environ["LFM_MODE"] = "quick"            # the kernel inherits this process's environment
    os.environ.setdefault("LFM_PROGRESS", "0")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    os.environ.pop("MPLBACKEND", None)
    executed = nbformat.reads(json.dumps(nb), as_version=4)
    client = NotebookClient(executed, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(folder)}})
    try:
        client.execute()
    except Exception as exc:  # noqa: BLE001 - a dead kernel or a timeout: report it, score what ran
        return executed, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    return executed, None


def report(name: str, results: list[Score], seconds: float, stopped: str | None = None,
           reference: str | None = None) -> str:
    width = max(len(s.exercise) for s in results)
    checks = f"; checks of {reference}" if reference else ""
    lines = [f"{name} (quick mode, {seconds:.0f} s{checks})"]
    for s in results:
        what = f" ({s.what})" if s.what else ""
        lines.append(f"  exercise {s.exercise:<{width}}  {s.points}/1  {'passed' if s.points else 'FAILED'}{what}: "
                     f"{s.reason}")
    if stopped:
        lines.append(f"  the notebook stopped early: {stopped}")
    lines.append(f"  total {sum(s.points for s in results)}/{len(results)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="the submitted notebooks (.ipynb)")
    parser.add_argument("--reference", type=Path, help="the instructor version whose check cells run (one notebook "
                        "only; default: notebooks/ holds one of the same file name)")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT, help="seconds per cell (default %(default)s)")
    args = parser.parse_args(argv)
    if args.reference is not None and len(args.notebooks) > 1:
        print("grade: --reference goes with one notebook", file=sys.stderr)
        return 2
    try:
        loaded = []
        for path in args.notebooks:
            nb, ref = load(path), args.reference or default_reference(path)
            if ref is not None:
                nb = with_checks_of(nb, load(ref), str(path))
            loaded.append((path, nb, ref))
    except ValueError as exc:
        print(f"grade: {exc}", file=sys.stderr)
        return 2
    status, got, possible = 0, 0, 0
    for path, nb, ref in loaded:
        start = time.perf_counter()
        executed, stopped = execute(nb, path.resolve().parent, args.timeout)
        results = scores(executed)
        print(report(path.name, results, time.perf_counter() - start, stopped, ref and str(ref)), flush=True)
        got, possible = got + sum(s.points for s in results), possible + len(results)
        if stopped:
            status = 2
        elif status == 0 and any(not s.points for s in results):
            status = 1
    if len(loaded) > 1:
        print(f"all notebooks: {got}/{possible}")
    return status


if __name__ == "__main__":
    sys.exit(main())
