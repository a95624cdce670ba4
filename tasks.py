#!/usr/bin/env python3
"""The project's commands, each setting up what it needs and safe to run again.

    python3 tasks.py run       # execute every notebook headless in quick mode -> build/
    python3 tasks.py test      # lint, unit tests, and every notebook through nbval (quick mode)
    python3 tasks.py rehearse  # notebooks 04 and 05 in full-mode configuration, short, offline -> build/rehearsal/
    python3 tasks.py pretrain  # retrain the networks that quick mode of 04 and 05 starts from -> lfm_core/assets/
    python3 tasks.py readme    # rebuild the README's runtime table from the notebooks' metadata
    python3 tasks.py site      # the course site from the notebooks that `run` executed -> build/site/
    python3 tasks.py figures   # the README's headline figures from the executed notebooks -> docs/figures/
    python3 tasks.py lab       # student versions (marked solutions blanked) -> build/lab/
    python3 tasks.py grade NOTEBOOK.ipynb ...   # run a submitted notebook's exercise checks, print its score
    python3 tasks.py colab OWNER/REPO   # point every Open-in-Colab badge and setup cell at github.com/OWNER/REPO
    python3 tasks.py peer      # also install the peer libraries the benchmarks compare against (torchcfm)
    python3 tasks.py setup     # only create or update the virtual environment

`run` and `test` are the README's two commands. `run`, `test`, `rehearse`, `pretrain`, `site`, `figures`, `grade`,
`peer` and `setup` first create a virtual environment in .venv (once), install torch into it if it has none, and
install this project with its notebooks, dev and site extras (again only when pyproject.toml changed); `readme`, `lab`
and `colab` need none. `test` and `site --check` also install Debian's chromium for the browser check when it is missing
and this is root on a machine with apt-get. This file is standard library only, so it runs on a machine with
nothing but Python 3.10+ and pip.

What each writes: `run`, `rehearse`, `site` and `lab` write under build/ only, `pretrain` into lfm_core/assets/ (and
build/pretrain/), `figures` into docs/figures/, `readme` into README.md, `colab` into pyproject.toml and the
notebooks. With --record, `run` and
`rehearse` also write each passing notebook's measured time into its metadata (metadata.lfm.runtime, the one
source of measured notebook times) and rebuild the README's runtime table from it.

Options:
    run --full            execute in full mode instead (GPU sizes; slow on a CPU)
    run NAME ...          execute only the notebooks whose file name contains NAME (a NAME that matches none stops
                          the command and lists the notebooks)
    run --record          also record the measured times (above); `rehearse --record` likewise
    rehearse --celeba DIR the CelebA-HQ folder to rehearse with (default $LFM_CELEBA_HQ_DIR, else
                          ../shared/data/celeba_hq_sample when it exists)
    rehearse NAME ...     only some of notebooks 04 and 05 (`pretrain NAME ...` likewise)
    test -- ARGS          pass ARGS on to pytest (e.g. `python3 tasks.py test -- tests -k paths`)
    site --check          also open every page in headless Chromium (scripts/check_site.py; screenshots in
                          build/site-shots/)
    lab NAME ...          only some notebooks
    grade --reference FILE  the instructor version whose check cells grade the one NOTEBOOK given (default: the
                          notebook of the same file name in notebooks/, where there is one)

Environment:
    LFM_TORCH_SPEC        the torch requirement installed into a fresh .venv (default torch==2.13.0,
                          a CPU build on the project's CI machines; on Linux elsewhere PyPI's default
                          build includes CUDA)
    LFM_VENV              where the virtual environment lives (default .venv)
    LFM_CHROMIUM          the browser of the site's browser check (default: chromium on the PATH)
The commands set LFM_MODE (quick, full, rehearsal or pretrain) for the notebooks they run; the README's table of
environment variables lists the others.
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
TEST_WORKERS = 2  # pytest-xdist processes of `test` (the machines this project is tested on have 2 cores)
EXTRAS = "notebooks,dev,site"  # what setup() installs besides the library (pyproject.toml's optional dependencies)


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
        _run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", f"{ROOT}[{EXTRAS}]"])
        STAMP.write_text(digest + "\n")


def _env(mode: str) -> dict:
    """This process's environment with ``LFM_MODE=mode``, for running notebooks and tests."""
    env = dict(os.environ)
    env["LFM_MODE"] = mode
    env.pop("MPLBACKEND", None)  # the inline backend is headless already; Agg would drop figures
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def _run_notebooks():
    """scripts/run_notebooks.py as a module: notebook discovery and the README's table (standard library only)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _options(command: str, args: list[str], flags: tuple[str, ...]) -> tuple[set[str], list[str]]:
    """``args`` split into the given ``--flags`` and the notebook names; any other ``--option`` stops the command."""
    unknown = [a for a in args if a.startswith("-") and a not in flags]
    if unknown:
        sys.exit(f"{command}: unknown option {unknown[0]} (options: {', '.join(flags) or 'none'}; see tasks.py)")
    return {a for a in args if a in flags}, [a for a in args if a not in flags]


def _check_names(names: list[str], allowed: tuple[str, ...] | None = None) -> None:
    """Stop with the list of notebooks when a name matches none (or, with ``allowed``, is not one of them)."""
    if allowed is not None:
        unknown = sorted(set(names) - set(allowed))
        if unknown:
            sys.exit(f"only notebooks {', '.join(allowed)} can be given here, got {unknown}")
    try:
        _run_notebooks().find_notebooks(names)
    except ValueError as exc:
        sys.exit(str(exc))


def run(args: list[str]) -> None:
    """Execute the notebooks (quick mode, or full with --full) into build/; with --record, record their times."""
    flags, names = _options("run", args, ("--full", "--record"))
    _check_names(names)
    setup()
    record = ["--record"] if "--record" in flags else []
    _run([_python(), ROOT / "scripts" / "run_notebooks.py", "--out", ROOT / "build", *record, *names],
         env=_env("full" if "--full" in flags else "quick"), cwd=ROOT)


def _apt_install(package: str, advice: str) -> bool:
    """Install Debian's ``package`` with apt-get, where this process is root on a machine with apt-get (as on CI);
    elsewhere print ``advice`` and return False."""
    if not (shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0):
        print(f"{package} is missing and cannot be installed here (it needs root and apt-get): {advice}",
              file=sys.stderr)
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        _run(["apt-get", "update", "-qq"], env=env)
        _run(["apt-get", "install", "-y", "-qq", package], env=env)
    except subprocess.CalledProcessError:
        print(f"could not install {package} with apt-get: {advice}", file=sys.stderr)
        return False
    return True


def chromium(install: bool = True) -> str | None:
    """The browser of the site's browser check: $LFM_CHROMIUM, else chromium on the PATH; when missing and
    ``install``, Debian's chromium package is installed (as root, with apt-get), the way CI gets it."""
    for name in filter(None, (os.environ.get("LFM_CHROMIUM"), "chromium", "chromium-browser")):
        if shutil.which(name):
            return shutil.which(name)
    if install:
        _apt_install("chromium", "install Debian's chromium package, or set LFM_CHROMIUM")
    return shutil.which("chromium")


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")   # lfm_core.fashion_mnist.DEBIAN_DIR


def fashion_mnist() -> bool:
    """Whether Fashion-MNIST's IDX files are in Debian's folder; when missing, its dataset-fashion-mnist package is
    installed (as root, with apt-get), the way CI gets it; elsewhere the tests that need it skip."""
    def present():
        return all(any(FASHION_MNIST_DIR.glob(f"{part}-idx*-ubyte*")) for part in
                   ("train-images", "train-labels", "t10k-images", "t10k-labels"))

    if not present():
        _apt_install("dataset-fashion-mnist", "the tests that need Fashion-MNIST skip without it")
    return present()


def test(args: list[str]) -> None:
    setup()
    chromium()   # tests/test_site.py opens a small site in it
    fashion_mnist()   # the Frechet metric's classifier and its benchmark read it
    env = _env("quick")
    env["LFM_PROGRESS"] = "0"
    py = _python()
    _run([py, "-m", "ruff", "check", ROOT], env=env, cwd=ROOT)
    extra = args[1:] if args[:1] == ["--"] else args
    # the whole suite in two pytest-xdist workers, a file per worker at a time (a notebook's cells share one
    # kernel, in order); the notebooks first, since they are the longest files. Each worker and the notebook
    # kernels it starts use one thread for torch's operations, so that two workers share two cores instead of
    # running four threads on them.
    targets = extra or ["notebooks", "tests", "-n", str(TEST_WORKERS), "--dist", "loadfile"]
    if not extra:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    _run([py, "-m", "pytest", *targets, "--nbval-lax", "--nbval-current-env",
          f"--nbval-cell-timeout={CELL_TIMEOUT}", "--durations=15"], env=env, cwd=ROOT)


REHEARSAL_NOTEBOOKS = ("04", "05")
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "celeba_hq_sample"


def rehearse(args: list[str]) -> None:
    """Notebooks 04 and 05 in their full-mode configuration with short lengths, on local stand-ins (offline).

    The CelebA-HQ images come from --celeba, $LFM_CELEBA_HQ_DIR or ../shared/data/celeba_hq_sample; the
    autoencoder is sd-vae-ft-mse's architecture with random weights (scripts/make_standin_autoencoder.py,
    written once to data/cache/). Executed notebooks and figures go to build/rehearsal/; with --record, the times
    and peak memory also go into the notebooks' metadata and the README's runtime table.
    """
    celeba = None
    if "--celeba" in args:
        i = args.index("--celeba")
        if i + 1 >= len(args):
            sys.exit("--celeba needs a folder")
        celeba = args[i + 1]
        args = args[:i] + args[i + 2:]
    flags, names = _options("rehearse", args, ("--record",))
    names = names or list(REHEARSAL_NOTEBOOKS)
    _check_names(names, REHEARSAL_NOTEBOOKS)
    celeba = celeba or os.environ.get("LFM_CELEBA_HQ_DIR") or (str(SHARED_SAMPLE) if SHARED_SAMPLE.is_dir() else None)
    if not celeba or not Path(celeba).is_dir():
        sys.exit("the rehearsal needs CelebA-HQ images in the StarGAN v2 layout: pass --celeba DIR or set "
                 "LFM_CELEBA_HQ_DIR (the shared sample is ../shared/data/celeba_hq_sample)")
    setup()
    standin = ROOT / "data" / "cache" / "standin-sd-vae-ft-mse"
    if not (standin / "config.json").exists():
        _run([_python(), ROOT / "scripts" / "make_standin_autoencoder.py", "--out", standin], cwd=ROOT)
    env = _env("rehearsal")
    env.update(LFM_CELEBA_HQ_DIR=str(Path(celeba).resolve()), LFM_SD_VAE=str(standin), HF_HUB_OFFLINE="1",
               LFM_PROGRESS=env.get("LFM_PROGRESS", "0"))
    record = ["--record"] if "--record" in flags else []
    start = time.perf_counter()
    _run([_python(), ROOT / "scripts" / "run_notebooks.py", "--out", ROOT / "build" / "rehearsal", "--memory",
          *record, *names], env=env, cwd=ROOT)
    print(f"rehearsal passed in {time.perf_counter() - start:.0f} s (details: build/rehearsal/summary.json)")


PRETRAIN_NOTEBOOKS = ("04", "05")


def pretrain(args: list[str]) -> None:
    """Run notebooks 04 and 05 with LFM_MODE=pretrain (quick sizes): their own training code trains the networks
    that their quick mode starts from, for the pretraining lengths of their config cells, and writes them to
    lfm_core/assets/notebookNN/ (lfm_core.pretrained). Executed notebooks go to build/pretrain/."""
    names = args or list(PRETRAIN_NOTEBOOKS)
    unknown = sorted(set(names) - set(PRETRAIN_NOTEBOOKS))
    if unknown:
        sys.exit(f"only notebooks {', '.join(PRETRAIN_NOTEBOOKS)} have pretrained networks, got {unknown}")
    setup()
    for name in names:   # stale entries must not survive a retraining
        shutil.rmtree(ROOT / "lfm_core" / "assets" / f"notebook{name}", ignore_errors=True)
    env = _env("pretrain")
    env["LFM_PROGRESS"] = env.get("LFM_PROGRESS", "0")
    _run([_python(), ROOT / "scripts" / "run_notebooks.py", "--out", ROOT / "build" / "pretrain", *names],
         env=env, cwd=ROOT)


def github_repo_problem(value: str) -> str | None:
    """What makes ``value`` no GitHub ``OWNER/REPO``, or None. GitHub's rules: an owner is 1-39 letters, digits and
    single hyphens, neither first nor last; a repository name is letters, digits, ``.``, ``-`` and ``_``, at most 100,
    not ``.`` or ``..``, and without the ``.git`` that GitHub strips from clone URLs."""
    parts = value.split("/")
    if len(parts) != 2:
        return "it needs exactly one '/' between the owner and the repository"
    owner, repo = parts
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}", owner):
        return (f"the owner {owner!r} must be 1-39 letters, digits or single hyphens, "
                "not starting or ending with a hyphen")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", repo) or repo in (".", ".."):
        return f"the repository {repo!r} must be 1-100 letters, digits, '.', '-' or '_', and not '.' or '..'"
    if repo.lower().endswith(".git"):
        return f"write the repository without '.git' ({owner}/{repo[:-4]})"
    return None


def colab(args: list[str], root: Path = ROOT) -> None:
    """Point the repository URL ([project.urls] in pyproject.toml), every notebook's Open-in-Colab badge and every
    setup cell, and the README's address of the published site, at github.com/OWNER/REPO (a fork); a malformed
    OWNER/REPO is refused before anything is written. Standard library only (the site's Colab buttons are built
    from pyproject.toml)."""
    if len(args) != 1:
        sys.exit("usage: python3 tasks.py colab OWNER/REPO  (the GitHub repository that holds this project)")
    problem = github_repo_problem(args[0])
    if problem:
        sys.exit(f"colab: {args[0]!r} is not a GitHub OWNER/REPO: {problem}; nothing was changed")
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
    for path in _run_notebooks().find_notebooks(folder=root / "notebooks"):
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
    readme = root / "README.md"
    if readme.exists():   # the published site's address: https://OWNER.github.io/REPO/
        text = readme.read_text()
        readme.write_text(text.replace(pages_url(old), pages_url(new)))
    print(f"pointed pyproject.toml, the README's site address and {changed} notebook cells at github.com/{new} "
          f"(was {old})")


def pages_url(repo: str) -> str:
    """Where GitHub Pages publishes the site of github.com/OWNER/REPO (.github/workflows/site.yml)."""
    owner, name = repo.split("/")
    return f"https://{owner.lower()}.github.io/{name}/"


def site(args: list[str]) -> None:
    """The course site in build/site/ from the notebooks that `run` executed (build/notebooks/), without running
    them again (scripts/build_site.py); with --check, then the browser check on every page (scripts/check_site.py)."""
    flags, rest = _options("site", args, ("--check",))
    if rest:
        sys.exit(f"site takes no notebook names, got {rest}: it shows every notebook `python3 tasks.py run` executed")
    if sys.version_info < (3, 11):
        sys.exit(f"building the site needs Python 3.11 or newer (its Sphinx does), this is {sys.version.split()[0]}")
    if not (ROOT / "build" / "notebooks").is_dir():
        sys.exit("no executed notebooks in build/notebooks/: run `python3 tasks.py run` first")
    setup()
    start = time.perf_counter()
    _run([_python(), ROOT / "scripts" / "build_site.py", "--executed", ROOT / "build" / "notebooks",
          "--out", ROOT / "build" / "site"], cwd=ROOT)
    print(f"site built in {time.perf_counter() - start:.0f} s: build/site/index.html")
    if "--check" in flags:
        browser = chromium()
        if browser is None:
            sys.exit("the browser check needs chromium")
        _run([_python(), ROOT / "scripts" / "check_site.py", "--site", ROOT / "build" / "site",
              "--shots", ROOT / "build" / "site-shots"], cwd=ROOT, env=dict(os.environ, LFM_CHROMIUM=browser))


def figures(args: list[str]) -> None:
    """The README's headline figures (docs/chapters.json, "readme") from the executed notebooks -> docs/figures/."""
    if args:
        sys.exit(f"figures takes no arguments, got {args}")
    setup()
    _run([_python(), ROOT / "scripts" / "build_site.py", "--executed", ROOT / "build" / "notebooks",
          "--readme-figures", ROOT / "docs" / "figures"], cwd=ROOT)


def readme(args: list[str]) -> None:
    """Rebuild the README's runtime table from the notebooks' metadata (no virtual environment needed)."""
    if args:
        sys.exit(f"readme takes no arguments, got {args}")
    print("README's runtime table", "rebuilt" if _run_notebooks().update_readme() else "already current")


def lab(args: list[str]) -> None:
    """Student versions of the notebooks in build/lab/ (scripts/make_lab.py; standard library only)."""
    _run([sys.executable, ROOT / "scripts" / "make_lab.py", "--out", ROOT / "build" / "lab", *args], cwd=ROOT)


def grade(args: list[str]) -> None:
    """Score submitted notebooks: each runs headless in quick mode, errors allowed, and each exercise scores by its
    check cells, the instructor version's (scripts/grade.py; exit status 0 with full marks, 1 with a failed exercise,
    2 for an argument that is no notebook with checks, checked before anything is set up, or a notebook that could
    not run to its end)."""
    import importlib.util

    usage = ("usage: python3 tasks.py grade NOTEBOOK.ipynb [...]  or  grade --reference INSTRUCTOR.ipynb NOTEBOOK.ipynb"
             "  (submitted notebooks, e.g. from build/lab/)")
    reference = None
    if "--reference" in args:
        i = args.index("--reference")
        if i + 1 >= len(args) or args[i + 1].startswith("-"):
            print(usage, file=sys.stderr)
            sys.exit(2)
        reference, args = args[i + 1], args[:i] + args[i + 2:]
    if not args or any(a.startswith("-") for a in args) or (reference is not None and len(args) != 1):
        print(usage, file=sys.stderr)
        sys.exit(2)
    spec = importlib.util.spec_from_file_location("grade", ROOT / "scripts" / "grade.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for arg in [*args, *([reference] if reference else [])]:
        try:
            module.load(arg)
        except ValueError as exc:
            print(f"grade: {exc}", file=sys.stderr)
            sys.exit(2)
    setup()
    env = _env("quick")
    env["LFM_PROGRESS"] = "0"
    ref = ["--reference", Path(reference).resolve()] if reference else []
    _run([_python(), ROOT / "scripts" / "grade.py", *ref, *[Path(a).resolve() for a in args]], env=env, cwd=ROOT)


def peer(args: list[str]) -> None:
    """Install torchcfm for `benchmarks/ot_cfm_2d.py --peer torchcfm`.

    Without its dependencies: its matchers need only torch, numpy and POT, while its torchdyn
    dependency pulls torchvision, which would replace the installed torch by another build.
    """
    setup()
    _run([_python(), "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps", "torchcfm>=1.0.7"])


def main() -> None:
    jobs = {"run": run, "test": test, "rehearse": rehearse, "pretrain": pretrain, "colab": colab, "peer": peer,
            "site": site, "figures": figures, "readme": readme, "lab": lab, "grade": grade,
            "setup": lambda _args: setup()}
    if len(sys.argv) < 2 or sys.argv[1] not in jobs:
        sys.exit(__doc__)
    try:
        jobs[sys.argv[1]](sys.argv[2:])
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)


if __name__ == "__main__":
    main()
