#!/usr/bin/env python3
"""Student versions of the notebooks: every marked solution blanked, everything else as it is.

    python scripts/make_lab.py --out build/lab [NAME ...]      # usually: python3 tasks.py lab

The notebooks are the instructor versions: each exercise has a solution, marked the way nbgrader marks them.

* In a code cell, the lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (markers included) become
  ``# YOUR CODE HERE`` and ``raise NotImplementedError()``, indented as the marker was; the rest of the cell
  (imports, the plot that shows the student's result) stays.
* In a markdown cell, the text from ``<!-- BEGIN SOLUTION -->`` to ``<!-- END SOLUTION -->`` becomes
  ``*YOUR ANSWER HERE*``.

* A check cell, a code cell whose first line is ``# Check: exercise N``, stays as it is: it compares the student's
  answer with the library's and says by how much they differ, and ``python3 tasks.py grade`` (scripts/grade.py)
  scores a submitted notebook by these cells. A solution marker inside one is an error.

Outputs are cleared, and ``metadata.lfm.lab`` records that the file is a student version. Everything before the
first blank is the instructor version's own cells, so a student version runs up to its first exercise exactly as
the full notebook (which ``python3 tasks.py test`` runs, solutions included). Standard library only.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_notebooks import find_notebooks  # noqa: E402  (the one notebook discovery; standard library only)

CODE_BEGIN, CODE_END = "### BEGIN SOLUTION", "### END SOLUTION"
MD_BEGIN, MD_END = "<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->"
CODE_BLANK = ("# YOUR CODE HERE", "raise NotImplementedError()")
MD_BLANK = "*YOUR ANSWER HERE*"
CHECK = re.compile(r"#\s*Check:\s*exercise\b", re.I)   # the first line of a check cell (scripts/grade.py)


def _lines(cell: dict) -> list[str]:
    src = cell["source"]
    return ("".join(src) if isinstance(src, list) else src).split("\n")


def _set(cell: dict, lines: list[str]) -> None:
    text = "\n".join(lines)
    parts = text.split("\n")
    cell["source"] = [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _blank(lines: list[str], begin: str, end: str, blank, where: str) -> tuple[list[str], int]:
    """Replace each begin..end block of ``lines`` by ``blank`` (a function of the marker's indent)."""
    out, n, inside, indent = [], 0, False, ""
    for i, line in enumerate(lines):
        marker = line.strip()
        if marker == begin:
            if inside:
                raise ValueError(f"{where}, line {i + 1}: {begin!r} inside another solution")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out.extend(blank(indent))
            n += 1
        elif marker == end:
            if not inside:
                raise ValueError(f"{where}, line {i + 1}: {end!r} without {begin!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {begin!r} without {end!r}")
    return out, n


def student_version(nb: dict, name: str = "notebook") -> tuple[dict, int]:
    """The student version of notebook ``nb`` (a JSON dict) and the number of solutions it blanked.

    Raises ValueError, naming the cell, for unbalanced or nested markers."""
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise TypeError(f"nb must be a notebook's JSON dict with a 'cells' list, got {type(nb).__name__}")
    out = copy.deepcopy(nb)
    total = 0
    for i, cell in enumerate(out["cells"]):
        where = f"{name}, cell {i}"
        if cell["cell_type"] == "code":
            if CHECK.match(_lines(cell)[0].strip()) and any(ln.strip() == CODE_BEGIN for ln in _lines(cell)):
                raise ValueError(f"{where}: a check cell holds a solution; it stays in the student version, so keep "
                                 "the solution in the exercise's own cell")
            lines, n = _blank(_lines(cell), CODE_BEGIN, CODE_END, lambda ind: [ind + s for s in CODE_BLANK], where)
            cell["outputs"], cell["execution_count"] = [], None
        elif cell["cell_type"] == "markdown":
            lines, n = _blank(_lines(cell), MD_BEGIN, MD_END, lambda ind: [ind + MD_BLANK], where)
        else:
            continue
        if n:
            _set(cell, lines)
            total += n
    out.setdefault("metadata", {}).setdefault("lfm", {})["lab"] = {"student_version": True, "blanks": total}
    return out, total


def first_blank(nb: dict) -> int | None:
    """Index of the first code cell with a blank (where a student version stops running), or None."""
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code" and CODE_BLANK[1] in "".join(cell["source"]):
            return i
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="only notebooks whose file name contains one of these")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "lab")
    args = parser.parse_args()
    try:
        paths = find_notebooks(args.names)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        lab, n = student_version(json.loads(path.read_text()), path.name)
        (args.out / path.name).write_text(json.dumps(lab, indent=1, ensure_ascii=False) + "\n")
        print(f"{path.name}: {n} solutions blanked -> {args.out / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
