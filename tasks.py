#!/usr/bin/env python3
"""The project's two jobs, each setting up what it needs and safe to run again.

    python3 tasks.py run       # execute every notebook headless in quick mode -> build/, record the times
    python3 tasks.py test      # lint, unit tests, and every notebook through nbval (quick mode)
    python3 tasks.py rehearse  # notebooks 04 and 05 in full-mode configuration, short, offline -> build/rehearsal/
    python3 tasks.py pretrain  # retrain the networks that quick mode of notebooks 04 and 05 starts from
    python3 tasks.py colab OWNER/REPO   # point every Open-in-Colab badge and setup cell at github.com/OWNER/REPO
    python3 tasks.py readme    # rebuild the README's runtime table from the notebooks' metadata
    python3 tasks.py lab       # student versions (marked solutions blanked) -> build/lab/
    python3 tasks.py peer      # also install the peer libraries the benchmarks compare against (torchcfm)

Both create a virtual environment in .venv (once), install torch into it if it has none, and
install this project with its notebook and dev extras (again only when pyproject.toml changed).
Standard library only, so it runs on a machine with nothing but Python 3.10+ and pip.

Options:
    run --full            execute in full mode instead (GPU sizes; slow on a CPU)
    run NAME ...          execute only the notebooks whose file name contains NAME
    run --no-record       do not write the measured times into the notebooks' metadata and the README
                          (`run` and `rehearse` record them by default: metadata.lfm.runtime is their one source)
    test -- ARGS          pass ARGS on to pytest (e.g. `python3 tasks.py test -- tests -k paths`)

    rehearse --celeba DIR the CelebA-HQ folder to rehearse with (default $LFM_CELEBA_HQ_DIR, else
                          ../shared/data/celeba_hq_sample when it exists)

Environment:
    LFM_TORCH_SPEC        the torch requirement installed into a fresh .venv (default torch==2.13.0,
                          a CPU build on the project's CI machines; on Linux elsewhere PyPI's default
                          build includes CUDA)
    LFM_VENV              where the virtual environment lives (default .venv)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("LFM_VENV", ROOT / ".venv"))
STAMP = VENV / ".lfm-installed"
CELL_TIMEOUT = 600  # seconds, per notebook cell under nbval


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd, **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def _has_module(name: str) -> bool:
    return subprocess.run([str(_python()), "-c", f"import {name}"], capture_output=True).returncode == 0


def setup() -> None:
    """Create .venv, install torch if missing, install the project if pyproject.toml changed."""
    if sys.version_info < (3, 10):  # noqa: UP036 - tell users of older Pythons why it stops
        sys.exit(f"Python 3.10 or newer is needed, this is {sys.version.split()[0]}")
    if not _python().exists():
        try:
            _run([sys.executable, "-m", "venv", VENV])
        except subprocess.CalledProcessError:
            sys.exit("could not create a virtual environment; on Debian/Ubuntu install python3-venv first")
    py = _python()
    if not _has_module("torch"):
        _run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--upgrade", "pip"])
        _run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q",
              os.environ.get("LFM_TORCH_SPEC", "torch==2.13.0")])
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != digest or not _has_module("lfm_core"):
        _run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", f"{ROOT}[notebooks,dev]"])
        STAMP.write_text(digest + "\n")


def _env(quick: bool) -> dict:
    env = dict(os.environ)
    env["LFM_QUICK"] = "1" if quick else "0"
    env.pop("MPLBACKEND", None)  # the inline backend is headless already; Agg would drop figures
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def run(args: list[str]) -> None:
    setup()
    full = "--full" in args
    record = [] if "--no-record" in args else ["--record"]
    names = [a for a in args if a not in ("--full", "--no-record")]
    _run([_python(), ROOT / "scripts" / "run_notebooks.py", "--out", ROOT / "build", *record, *names],
         env=_env(quick=not full), cwd=ROOT)


def test(args: list[str]) -> None:
    setup()
    env = _env(quick=True)
    env["LFM_PROGRESS"] = "0"
    py = _python()
    _run([py, "-m", "ruff", "check", ROOT], env=env, cwd=ROOT)
    extra = args[1:] if args[:1] == ["--"] else args
    targets = extra or ["tests", "notebooks"]
    _run([py, "-m", "pytest", *targets, "--nbval-lax", "--nbval-current-env",
          f"--nbval-cell-timeout={CELL_TIMEOUT}", "--durations=15"], env=env, cwd=ROOT)


REHEARSAL_NOTEBOOKS = ("04", "05")
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "celeba_hq_sample"


def rehearse(args: list[str]) -> None:
    """Notebooks 04 and 05 in their full-mode configuration with short lengths, on local stand-ins (offline).

    The CelebA-HQ images come from --celeba, $LFM_CELEBA_HQ_DIR or ../shared/data/celeba_hq_sample; the
    autoencoder is sd-vae-ft-mse's architecture with random weights (scripts/make_standin_autoencoder.py,
    written once to data/cache/). Executed notebooks and figures go to build/rehearsal/.
    """
    setup()
    celeba = None
    if "--celeba" in args:
        i = args.index("--celeba")
        if i + 1 >= len(args):
            sys.exit("--celeba needs a folder")
        celeba = args[i + 1]
        args = args[:i] + args[i + 2:]
    celeba = celeba or os.environ.get("LFM_CELEBA_HQ_DIR") or (str(SHARED_SAMPLE) if SHARED_SAMPLE.is_dir() else None)
    if not celeba or not Path(celeba).is_dir():
        sys.exit("the rehearsal needs CelebA-HQ images in the StarGAN v2 layout: pass --celeba DIR or set "
                 "LFM_CELEBA_HQ_DIR (the shared sample is ../shared/data/celeba_hq_sample)")
    standin = ROOT / "data" / "cache" / "standin-sd-vae-ft-mse"
    if not (standin / "config.json").exists():
        _run([_python(), ROOT / "scripts" / "make_standin_autoencoder.py", "--out", standin], cwd=ROOT)
    env = _env(quick=False)
    env.update(LFM_REHEARSAL="1", LFM_CELEBA_HQ_DIR=str(Path(celeba).resolve()), LFM_SD_VAE=str(standin),
               HF_HUB_OFFLINE="1", LFM_PROGRESS=env.get("LFM_PROGRESS", "0"))
    record = [] if "--no-record" in args else ["--record"]
    names = [a for a in args if a != "--no-record"] or list(REHEARSAL_NOTEBOOKS)
    start = time.perf_counter()
    _run([_python(), ROOT / "scripts" / "run_notebooks.py", "--out", ROOT / "build" / "rehearsal", "--memory",
          *record, *names], env=env, cwd=ROOT)
    print(f"rehearsal passed in {time.perf_counter() - start:.0f} s (details: build/rehearsal/summary.json)")


PRETRAIN_NOTEBOOKS = ("04", "05")


def pretrain(args: list[str]) -> None:
    """Run notebooks 04 and 05 in quick mode with LFM_PRETRAIN=1: their own training code trains the networks that
    their quick mode starts from, for the pretraining lengths of their config cells, and writes them to
    lfm_core/assets/notebookNN/ (lfm_core.pretrained). Executed notebooks go to build/pretrain/."""
    names = args or list(PRETRAIN_NOTEBOOKS)
    unknown = sorted(set(names) - set(PRETRAIN_NOTEBOOKS))
    if unknown:
        sys.exit(f"only notebooks {', '.join(PRETRAIN_NOTEBOOKS)} have pretrained networks, got {unknown}")
    setup()
    for name in names:   # stale entries must not survive a retraining
        shutil.rmtree(ROOT / "lfm_core" / "assets" / f"notebook{name}", ignore_errors=True)
    env = _env(quick=True)
    env.update(LFM_PRETRAIN="1", LFM_PROGRESS=env.get("LFM_PROGRESS", "0"))
    _run([_python(), ROOT / "scripts" / "run_notebooks.py", "--out", ROOT / "build" / "pretrain", *names],
         env=env, cwd=ROOT)


def colab(args: list[str], root: Path = ROOT) -> None:
    """Point the repository URL ([project.urls] in pyproject.toml), every notebook's Open-in-Colab badge and every
    setup cell at github.com/OWNER/REPO (a fork). Standard library only."""
    if len(args) != 1 or not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", args[0]):
        sys.exit("usage: python3 tasks.py colab OWNER/REPO  (the GitHub repository that holds this project)")
    new = args[0]
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    m = re.search(r'^Repository = "https://github.com/([^"]+)"', text, re.M)
    if not m:
        sys.exit("pyproject.toml has no [project.urls] Repository = \"https://github.com/OWNER/REPO\"")
    old = m.group(1)
    pyproject.write_text(text.replace(f'Repository = "https://github.com/{old}"',
                                      f'Repository = "https://github.com/{new}"'))
    changed = 0
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            src = "".join(cell["source"])
            out = src.replace(f"colab.research.google.com/github/{old}/", f"colab.research.google.com/github/{new}/")
            out = out.replace(f'REPO = "{old}"', f'REPO = "{new}"')
            if out != src:
                lines = out.split("\n")
                cell["source"] = [ln + "\n" for ln in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
                changed += 1
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    print(f"pointed pyproject.toml and {changed} notebook cells at github.com/{new} (was {old})")


def readme(args: list[str]) -> None:
    """Rebuild the README's runtime table from the notebooks' metadata (no virtual environment needed)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError:  # nbclient lives in the virtual environment
        setup()
        _run([_python(), __file__, "readme"], cwd=ROOT)
        return
    print("README's runtime table", "rebuilt" if module.update_readme() else "already current")


def lab(args: list[str]) -> None:
    """Student versions of the notebooks in build/lab/ (scripts/make_lab.py; standard library only)."""
    _run([sys.executable, ROOT / "scripts" / "make_lab.py", "--out", ROOT / "build" / "lab", *args], cwd=ROOT)


def peer(args: list[str]) -> None:
    """Install torchcfm for `benchmarks/ot_cfm_2d.py --peer torchcfm`.

    Without its dependencies: its matchers need only torch, numpy and POT, while its torchdyn
    dependency pulls torchvision, which would replace the installed torch by another build.
    """
    setup()
    _run([_python(), "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps", "torchcfm>=1.0.7"])


def main() -> None:
    jobs = {"run": run, "test": test, "rehearse": rehearse, "pretrain": pretrain, "colab": colab, "peer": peer,
            "readme": readme, "lab": lab, "setup": lambda _args: setup()}
    if len(sys.argv) < 2 or sys.argv[1] not in jobs:
        sys.exit(__doc__)
    try:
        jobs[sys.argv[1]](sys.argv[2:])
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)


if __name__ == "__main__":
    main()
