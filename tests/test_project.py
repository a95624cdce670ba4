"""The project's own conventions: installation files agree, notebooks are clean, the README commands are real."""

import json
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
README = (ROOT / "README.md").read_text()


def _split(req: str):
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def _environment_pip_requirements():
    reqs, in_pip = [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped == "- pip:":
            in_pip = True
            continue
        if in_pip and stripped.startswith("- ") and not stripped.startswith("- -e"):
            reqs.append(stripped[2:])
    return reqs


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = PYPROJECT["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    assert sorted(map(_split, _environment_pip_requirements())) == sorted(map(_split, declared))
    env = (ROOT / "environment.yml").read_text()
    assert "- -e .[notebooks,fid,dev]" in env
    assert f"python{project['requires-python']}" in env


def test_dependencies_have_lower_bounds_not_pins():
    project = PYPROJECT["project"]
    for req in project["dependencies"] + sum(project["optional-dependencies"].values(), []):
        name, spec = _split(req)
        assert spec.startswith(">="), f"{name} should have a lower bound (>=), got {spec!r}"
        assert "==" not in spec and "<" not in spec, f"{name} must not be pinned or capped: {spec!r}"


def _first_code_block(text):
    m = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    return [ln.split("#")[0].strip() for ln in m.group(1).splitlines() if ln.split("#")[0].strip()]


def test_readme_starts_with_two_commands_and_ci_runs_the_test_one():
    commands = _first_code_block(README)
    assert commands == ["python3 tasks.py run", "python3 tasks.py test"]
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.strip().startswith("#")]
    assert ci[-1] == commands[1], "CI must run the README's test command exactly"


def test_readme_and_data_readme_list_every_notebook_and_source():
    for nb in NOTEBOOKS:
        assert nb.name in README, f"README.md does not list {nb.name}"
    data_readme = (ROOT / "data" / "README.md").read_text()
    for word in ("Licence", "toy"):
        assert word.lower() in data_readme.lower()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["metadata"].get("lfm", {}).get("quick_budget_s"), "set metadata.lfm.quick_budget_s"
    cells = nb["cells"]
    ids = [cell.get("id") for cell in cells]
    if (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5):  # nbformat 4.5: every cell has a unique id
        assert all(ids) and len(set(ids)) == len(ids), "every cell needs its own id (nbformat.validator.normalize)"
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, f"cell {i} has outputs: strip it"
    src = ["".join(c["source"]) for c in cells]
    repo = PYPROJECT["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    badge = f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{path.name}"
    assert cells[0]["cell_type"] == "markdown" and badge in src[0], "first cell: title and Open-in-Colab badge"
    assert "You will learn" in src[0]
    assert any('"google.colab" in sys.modules' in s and repo in s for s in src), "a setup cell installing on Colab"
    assert any("runtime.describe(" in s and "seed_everything(" in s for s in src), "a config cell: mode, seeds"
    assert sum(s.count("assert ") for s, c in zip(src, cells, strict=True) if c["cell_type"] == "code") >= 5
    tail = "\n".join(src[-2:])
    assert "## Exercises" in tail and "## References" in tail


def test_badges_setup_cells_and_pyproject_agree_and_colab_rewrites_them(tmp_path):
    """The repository URL lives in pyproject.toml; `python3 tasks.py colab OWNER/REPO` points everything at a fork."""
    import importlib.util
    import shutil

    repo = PYPROJECT["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    for nb in NOTEBOOKS:
        text = nb.read_text()
        assert f"colab.research.google.com/github/{repo}/blob/main/notebooks/{nb.name}" in text, nb.name
        assert f'REPO = \\"{repo}\\"' in text, nb.name
    copy = tmp_path / "project"
    (copy / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    for nb in NOTEBOOKS:
        shutil.copy(nb, copy / "notebooks" / nb.name)
    spec = importlib.util.spec_from_file_location("tasks", ROOT / "tasks.py")
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    tasks.colab(["someone/fork"], root=copy)
    assert 'Repository = "https://github.com/someone/fork"' in (copy / "pyproject.toml").read_text()
    for nb in NOTEBOOKS:
        text = (copy / "notebooks" / nb.name).read_text()
        assert repo not in text and "colab.research.google.com/github/someone/fork/blob/main" in text
        assert 'REPO = \\"someone/fork\\"' in text
        json.loads(text)  # still a valid notebook
    with pytest.raises(SystemExit):
        tasks.colab(["not a repo"], root=copy)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_run_notebooks_records_the_kernels_peak_memory(tmp_path):
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
    run_notebooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_notebooks)
    assert run_notebooks.peak_rss_mib(10**9) is None   # no such process
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import time\nblock = bytearray(300 * 2**20)\nblock[::4096] = b'x' * len(block[::4096])\ntime.sleep(0.5)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "00_memory.ipynb"
    nbformat.write(nb, path)
    r = run_notebooks.execute(path, tmp_path / "out", timeout=60, memory=True)
    assert r["error"] is None
    assert r["peak_rss_mib"] >= 300, r   # the 300 MiB the cell touched, plus the interpreter
    assert "peak_rss_mib" not in run_notebooks.execute(path, tmp_path / "out", timeout=60)
