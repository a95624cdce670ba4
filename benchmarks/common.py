"""What the benchmark scripts share: their common flags, the command line and machine a report names, its files.

A script runs as ``python benchmarks/<name>.py`` and the tests load it from its file path; either way it puts
this folder on ``sys.path`` and imports this module as ``common``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def parser(doc: str, quick: str | None = "a small run (used by tests/test_benchmarks.py)",
           report_only: bool = True) -> argparse.ArgumentParser:
    """An argument parser described by the first line of ``doc``, with ``--out`` (default benchmarks/results/),
    ``--quick`` (``quick`` is its help; None: no such flag) and, with ``report_only``, ``--report-only JSON``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    if quick:
        p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the report (default: benchmarks/results/)")
    if report_only:
        p.add_argument("--report-only", type=Path, metavar="JSON",
                       help="rewrite the report (.md, and .png where there is one) from the measurements saved in "
                            "this JSON, without running")
    return p


def number(kind: type = int, minimum: float | None = None, above: float | None = None, below: float | None = None):
    """An argparse ``type``: a ``kind`` (int or float) that is >= ``minimum``, > ``above`` and < ``below`` where
    given. argparse names the flag in its error: ``argument --refs: must be >= 1, got 0``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above}, got {value}")
        if below is not None and value >= below:
            raise argparse.ArgumentTypeError(f"must be < {below}, got {value}")
        return value

    return parse


def override(cfg, args: argparse.Namespace, names) -> None:
    """Set each field of ``cfg`` in ``names`` to the flag of the same name, where that flag is given (not None)."""
    for name in names:
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))


def command(script: str, argv: list[str] | None = None) -> str:
    """The command line a report quotes: ``python benchmarks/<script's file name> <argv or sys.argv[1:]>``."""
    return " ".join([f"python benchmarks/{Path(script).name}", *(sys.argv[1:] if argv is None else argv)])


def machine() -> dict:
    """This machine as a report names it: host name, processor (else architecture), architecture, Python."""
    return {"host": platform.node() or "this machine", "processor": platform.processor() or platform.machine(),
            "arch": platform.machine(), "python": platform.python_version()}


def produced_by(command: str, on: str | None = None, details=(), minutes: float | None = None) -> str:
    """A report's header line: ``Produced by `command` on <on> (<details>) in <minutes> minutes.``, each part
    where given."""
    return (f"Produced by `{command}`" + (f" on {on}" if on else "") + (f" ({', '.join(details)})" if details else "")
            + (f" in {minutes:.1f} minutes" if minutes is not None else "") + ".")


def log(line: str) -> None:
    """Print ``line`` at once (progress of long runs, also when the output is a pipe)."""
    print(line, flush=True)


def pyplot():
    """matplotlib.pyplot drawing to files (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(out: Path, stem: str, lines: list[str], data: dict | None = None, figure=None) -> Path:
    """Write ``out/<stem>.md`` (``lines``), ``<stem>.json`` (``data``; None leaves the JSON as it is, for a report
    rewritten from it) and ``<stem>.png`` (a matplotlib ``figure``, then closed); returns the .md's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    if data is not None:
        (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    if figure is not None:
        figure.tight_layout()
        figure.savefig(out / f"{stem}.png", dpi=110)
        pyplot().close(figure)
    return out / f"{stem}.md"


def load(path: Path, parser: argparse.ArgumentParser, keys=("command", "rows")) -> dict:
    """The measurements saved in ``path`` for ``--report-only``; a missing file, one that is not JSON or one without
    ``keys`` is an error of that flag. A JSON with a ``command`` comes back with ``produced_by``, the header line of
    the run that measured."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        parser.error(f"--report-only: no such file {path}")
    except (OSError, ValueError) as exc:
        parser.error(f"--report-only: cannot read {path} as JSON ({exc})")
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        parser.error(f"--report-only: {path} has no {', '.join(missing)}: not the JSON of this benchmark")
    if "produced_by" not in data and "command" in data:
        # A JSON without its header line. The report written with it (same name, .md) holds the only record of the
        # machine that measured, so its header line is kept; without one the line says the machine is not recorded
        # (this machine's name would be wrong).
        md = path.with_suffix(".md")
        kept = [s for s in md.read_text().splitlines() if s.startswith("Produced by `")] if md.is_file() else []
        data["produced_by"] = kept[0] if kept else produced_by(
            data["command"], "a machine its JSON does not record",
            [f"torch {data['torch']}"] if "torch" in data else (),
            data["wall_seconds"] / 60 if "wall_seconds" in data else None)
    return data
