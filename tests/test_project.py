"""The project's own conventions: installation files agree, notebooks are clean, the README commands are real."""

import json
import os
import re
import sys
from pathlib import Path

import pytest
from _scripts import load_script

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _load_script(path: Path):
    """A project script (tasks.py, scripts/*.py) imported as a module by its path."""
    return load_script(path)


def _run_notebooks_module():
    return _load_script(ROOT / "scripts" / "run_notebooks.py")


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NOTEBOOKS = _run_notebooks_module().find_notebooks()
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


ENV_EXTRAS = ("notebooks", "fid", "dev")   # what environment.yml installs (the site's tools are tasks.py's business)


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = PYPROJECT["project"]
    declared = list(project["dependencies"])
    for extra in ENV_EXTRAS:
        declared += project["optional-dependencies"][extra]
    assert sorted(map(_split, _environment_pip_requirements())) == sorted(map(_split, declared))
    env = (ROOT / "environment.yml").read_text()
    assert f"- -e .[{','.join(ENV_EXTRAS)}]" in env
    assert f"python{project['requires-python']}" in env
    assert set(project["optional-dependencies"]) == {*ENV_EXTRAS, "site"}


def test_dependencies_have_lower_bounds_not_pins_except_the_sites_pinned_tools():
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    for req in project["dependencies"] + sum((v for k, v in extras.items() if k != "site"), []):
        name, spec = _split(req)
        assert spec.startswith(">="), f"{name} should have a lower bound (>=), got {spec!r}"
        assert "==" not in spec and "<" not in spec, f"{name} must not be pinned or capped: {spec!r}"
    for req in extras["site"]:   # the site renders the same on every build: its tools are pinned
        name, spec = _split(req)
        assert re.fullmatch(r"==[0-9.]+(;python_version>='3\.11')?", spec), f"pin {name} exactly: {spec!r}"
    tasks = _load_script(ROOT / "tasks.py")
    assert set(tasks.EXTRAS.split(",")) == {"notebooks", "dev", "site"}


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


def test_readme_is_short_and_lists_the_notebooks_in_order_with_the_lines_of_the_site():
    """About 100 lines; the notebook table in order 01..07, each with the one line that docs/chapters.json gives the
    site's landing page."""
    assert len(README.splitlines()) <= 110, "the README is for a newcomer: move detail to docs/"
    chapters = json.loads((ROOT / "docs" / "chapters.json").read_text())
    rows = re.findall(r"^\| \[`(\d\d_\w+\.ipynb)`\]\(notebooks/\1\) \| (.+) \|$", README, re.M)
    assert [name for name, _ in rows] == [p.name for p in NOTEBOOKS]
    assert [line for _, line in rows] == [chapters[p.name[:2]]["teaches"] for p in NOTEBOOKS]
    assert README.index("<!-- runtimes:begin -->") > README.index(rows[-1][1])   # the times right below
    for page in ("docs/development.md", "docs/reference.md", "docs/benchmarks.md", "data/README.md"):
        assert f"]({page})" in README and (ROOT / page).is_file(), page
    assert "latent_cache.cached_latents" in README and "autoencoders.cached_latents" not in README


def test_the_readmes_library_example_runs(monkeypatch):
    """The README's few lines of `lfm_core`, as written, at 20 training steps instead of 2000."""
    code, = re.findall(r"```python\n(.*?)```", README, re.S)
    assert "steps=2000" in code
    monkeypatch.setenv("LFM_PROGRESS", "0")
    namespace = {}
    exec(compile(code.replace("steps=2000", "steps=20"), "README.md", "exec"), namespace)
    assert tuple(namespace["samples"].shape) == (1000, 2)


def test_readme_shows_the_headline_figures_that_tasks_figures_writes():
    chapters = json.loads((ROOT / "docs" / "chapters.json").read_text())
    shown = re.findall(r'<img src="(docs/figures/[\w.]+\.png)"', README)
    expected = [f"docs/figures/{p.stem}.png" for p in NOTEBOOKS if chapters[p.name[:2]].get("readme")]
    assert shown == expected and 3 <= len(shown) <= 4
    for path in shown:
        data = (ROOT / path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 100_000, (path, len(data))
    assert sorted(p.as_posix() for p in (ROOT / "docs" / "figures").glob("*")) == sorted(
        (ROOT / p).as_posix() for p in shown), "docs/figures/ holds the README's figures and nothing else"


def test_readme_names_where_the_site_is_published_for_the_repository_of_pyproject():
    tasks = _load_script(ROOT / "tasks.py")
    repo = PYPROJECT["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    assert tasks.pages_url(repo) in README


def test_the_pages_workflow_runs_only_the_projects_tested_commands_then_deploys_the_site():
    text = (ROOT / ".github" / "workflows" / "site.yml").read_text()
    runs = [ln.split("run:", 1)[1].strip() for ln in text.splitlines() if ln.strip().startswith("run:")]
    assert runs == [_first_code_block(README)[1], "python3 tasks.py run", "python3 tasks.py site --check"]
    uses = sorted(ln.split("uses:", 1)[1].strip() for ln in text.splitlines() if "uses:" in ln)
    assert uses == ["actions/checkout@v4", "actions/deploy-pages@v4", "actions/upload-pages-artifact@v3"]
    assert "path: build/site" in text and "pages: write" in text and "id-token: write" in text
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
    assert any("SEED = runtime.seed()" in s and "seed_everything(SEED)" in s for s in src), "seeds from LFM_SEED"
    for i, (s, cell) in enumerate(zip(src, cells, strict=True)):
        for line in s.splitlines() if cell["cell_type"] == "code" else []:
            fixed = re.search(r"manual_seed\(\d|\bseed=\d|seed_everything\(\d", line)
            assert not fixed or "split(" in line or "held out" in line, \
                f"cell {i}: a seed that LFM_SEED does not move (write SEED + k; data splits excepted): {line.strip()}"
    assert sum(s.count("assert ") for s, c in zip(src, cells, strict=True) if c["cell_type"] == "code") >= 5
    assert src[-1].startswith("## References"), "the last cell: the references"
    start = next((i for i, s in enumerate(src) if s.startswith("## Exercises")), None)
    assert start is not None, "an '## Exercises' section before the references"
    solutions = [i for i in range(start, len(cells)) if cells[i]["cell_type"] == "code"]
    exercises = [s for s in src[start:] if re.match(r"\*\*\d+\. ", s)]
    assert len(solutions) == len(exercises) >= 3, "every exercise statement is followed by its solution cell"
    for i in solutions:
        assert "### BEGIN SOLUTION" in src[i] and "### END SOLUTION" in src[i], f"cell {i}: mark the solution"
        answer = src[i + 1]
        assert answer.startswith("**Answer") and "<!-- BEGIN SOLUTION -->" in answer, f"cell {i + 1}: the answer"


def test_badges_setup_cells_and_pyproject_agree_and_colab_rewrites_them(tmp_path):
    """The repository URL lives in pyproject.toml; `python3 tasks.py colab OWNER/REPO` points everything at a fork."""
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
    shutil.copy(ROOT / "README.md", copy / "README.md")
    tasks = _load_script(ROOT / "tasks.py")
    tasks.colab(["someone/fork"], root=copy)
    assert 'Repository = "https://github.com/someone/fork"' in (copy / "pyproject.toml").read_text()
    readme = (copy / "README.md").read_text()
    assert "https://someone.github.io/fork/" in readme and tasks.pages_url(repo) not in readme
    for nb in NOTEBOOKS:
        text = (copy / "notebooks" / nb.name).read_text()
        assert repo not in text and "colab.research.google.com/github/someone/fork/blob/main" in text
        assert 'REPO = \\"someone/fork\\"' in text
        json.loads(text)  # still a valid notebook
    with pytest.raises(SystemExit):
        tasks.colab(["not a repo"], root=copy)


@pytest.mark.parametrize("value", ["../..", "-/-", "o/r.git", "O/R.GIT", "a/b/c", "owner/", "/repo", "a--b/c", "-a/b",
                                   "a-/b", "o/..", "o/.", "x" * 40 + "/r", "o/" + "r" * 101, "o/r r", "ö/r", "o/r;rm"])
def test_colab_refuses_what_is_no_github_owner_and_repository_before_writing_anything(tmp_path, value):
    import shutil

    copy = tmp_path / "project"
    (copy / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    shutil.copy(ROOT / "README.md", copy / "README.md")
    shutil.copy(NOTEBOOKS[0], copy / "notebooks" / NOTEBOOKS[0].name)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    tasks = _load_script(ROOT / "tasks.py")
    with pytest.raises(SystemExit, match=r"is not a GitHub OWNER/REPO: .*; nothing was changed"):
        tasks.colab([value], root=copy)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    for good in ("someone/fork", "Some-One/my.repo_2", "a/b", "x" * 39 + "/" + "r" * 100):
        assert tasks.github_repo_problem(good) is None, good


def test_tasks_run_with_a_name_that_matches_no_notebook_lists_them_and_runs_nothing():
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "tasks.py"), "run", "nope"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode != 0 and "+ " not in done.stdout   # stopped before any command
    assert "no notebook matches 'nope'; the notebooks are: " + ", ".join(p.stem for p in NOTEBOOKS) in done.stderr


def test_tasks_site_builds_from_the_executed_notebooks_and_checks_only_when_asked(monkeypatch, tmp_path):
    tasks, calls = _tasks_with_recorded_commands(monkeypatch)
    monkeypatch.setattr(tasks, "ROOT", tmp_path)
    monkeypatch.setattr(tasks, "chromium", lambda install=True: "/usr/bin/chromium")
    with pytest.raises(SystemExit, match="run `python3 tasks.py run` first"):
        tasks.site([])
    (tmp_path / "build" / "notebooks").mkdir(parents=True)
    tasks.site([])
    (cmd, _), = calls
    assert cmd[1].endswith("build_site.py")
    assert cmd[cmd.index("--executed") + 1] == str(tmp_path / "build" / "notebooks")
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "build" / "site")
    calls.clear()
    tasks.site(["--check"])
    assert [c[0][1].rsplit("/", 1)[-1] for c in calls] == ["build_site.py", "check_site.py"]
    assert calls[1][0][calls[1][0].index("--shots") + 1] == str(tmp_path / "build" / "site-shots")
    calls.clear()
    with pytest.raises(SystemExit, match="site takes no notebook names"):
        tasks.site(["01"])
    with pytest.raises(SystemExit, match="site: unknown option --full"):
        tasks.site(["--full"])
    tasks.figures([])
    (cmd, _), = calls
    assert cmd[cmd.index("--readme-figures") + 1] == str(tmp_path / "docs" / "figures")
    with pytest.raises(SystemExit, match="figures takes no arguments"):
        tasks.figures(["01"])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_run_notebooks_records_the_kernels_peak_memory(tmp_path):
    import nbformat

    run_notebooks = _run_notebooks_module()
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


def test_run_notebooks_prints_a_line_for_each_slow_cell(tmp_path, capsys):
    import nbformat

    run_notebooks = _run_notebooks_module()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# a stand-in"),
                                         nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("import time\ntime.sleep(3.0)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "00_slow.ipynb"
    nbformat.write(nb, path)
    assert run_notebooks.execute(path, tmp_path / "out", timeout=60, slow_s=2.0)["error"] is None
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("cell ")]
    assert len(lines) == 1, lines   # the fast cell prints nothing
    match = re.fullmatch(r"cell 2 \(code cell 2 of 2\): (\d+\.\d) s, done at \d\d:\d\d:\d\d", lines[0])
    assert match and float(match[1]) >= 3.0, lines


def test_find_notebooks_filters_by_name_and_lists_the_notebooks_when_a_name_matches_none(tmp_path):
    rn = _run_notebooks_module()
    assert len(NOTEBOOKS) == 7 and [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]
    assert rn.find_notebooks(["05", "01"]) == [NOTEBOOKS[0], NOTEBOOKS[4]]
    assert [p.name for p in rn.find_notebooks(["flow"])] == [p.name for p in NOTEBOOKS if "flow" in p.name]
    with pytest.raises(ValueError, match=r"no notebook matches 'nope'; the notebooks are: 01_flow_matching_2d, "):
        rn.find_notebooks(["01", "nope"])
    with pytest.raises(TypeError, match="names"):
        rn.find_notebooks("01")
    (tmp_path / "00_a.ipynb").write_text("{}")
    (tmp_path / "scratch.ipynb").write_text("{}")   # not NN_topic: not part of the course
    assert rn.find_notebooks(folder=tmp_path) == [tmp_path / "00_a.ipynb"]


def _tasks_with_recorded_commands(monkeypatch):
    """tasks.py with setup() skipped and _run() recording its commands and their LFM_MODE instead of running them."""
    tasks = _load_script(ROOT / "tasks.py")
    calls = []
    monkeypatch.setattr(tasks, "setup", lambda: None)
    monkeypatch.setattr(tasks, "chromium", lambda install=True: "/usr/bin/chromium")
    monkeypatch.setattr(tasks, "fashion_mnist", lambda: True)
    monkeypatch.setattr(tasks, "_run", lambda cmd, **kw: calls.append(
        ([str(c) for c in cmd], kw.get("env", {}).get("LFM_MODE"))))
    return tasks, calls


def test_missing_debian_packages_are_installed_as_root_and_explained_elsewhere(monkeypatch, tmp_path, capsys):
    """tasks.py installs Fashion-MNIST's package (and chromium) with apt-get where it is root, as on CI; elsewhere it
    says what to do and goes on."""
    tasks = _load_script(ROOT / "tasks.py")
    calls = []
    monkeypatch.setattr(tasks, "_run", lambda cmd, **kw: calls.append([str(c) for c in cmd]))
    monkeypatch.setattr(tasks, "FASHION_MNIST_DIR", tmp_path)   # an empty folder: the data are missing
    monkeypatch.setattr(tasks.shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    monkeypatch.setattr(tasks.os, "geteuid", lambda: 0, raising=False)
    assert tasks.fashion_mnist() is False   # the stand-in apt-get installed nothing
    assert calls == [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]]
    calls.clear()
    monkeypatch.setattr(tasks.os, "geteuid", lambda: 1000, raising=False)
    assert tasks.fashion_mnist() is False and tasks.chromium() is None and calls == []
    err = capsys.readouterr().err
    assert "dataset-fashion-mnist is missing and cannot be installed here (it needs root and apt-get)" in err
    assert "chromium is missing" in err and "LFM_CHROMIUM" in err
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (tmp_path / name).write_bytes(b"")
    assert tasks.fashion_mnist() is False   # a folder without the test labels is not the data set
    calls.clear()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    assert tasks.fashion_mnist() is True and calls == []


def test_tasks_run_and_rehearse_record_only_when_asked(monkeypatch, tmp_path):
    tasks, calls = _tasks_with_recorded_commands(monkeypatch)
    tasks.run([])
    (cmd, mode), = calls
    assert cmd[1].endswith("run_notebooks.py") and "--record" not in cmd and mode == "quick"
    assert cmd[cmd.index("--out") + 1] == str(ROOT / "build")
    calls.clear()
    tasks.run(["--full", "--record", "01"])
    (cmd, mode), = calls
    assert "--record" in cmd and cmd[-1] == "01" and mode == "full"
    calls.clear()
    tasks.rehearse(["--celeba", str(tmp_path)])
    cmd, mode = calls[-1]
    assert "--record" not in cmd and cmd[-2:] == ["04", "05"] and mode == "rehearsal"
    assert cmd[cmd.index("--out") + 1] == str(ROOT / "build" / "rehearsal")
    calls.clear()
    tasks.rehearse(["--celeba", str(tmp_path), "--record", "05"])
    assert "--record" in calls[-1][0] and calls[-1][0][-1] == "05"


def test_tasks_test_runs_the_suite_in_workers_a_file_each_and_passes_arguments_through(monkeypatch):
    tasks, calls = _tasks_with_recorded_commands(monkeypatch)
    envs = []
    monkeypatch.setattr(tasks, "_run", lambda cmd, **kw: (calls.append(([str(c) for c in cmd], kw["env"]["LFM_MODE"])),
                                                         envs.append(kw["env"])))
    tasks.test([])
    (lint, _), (cmd, mode) = calls
    threads = envs[-1].get("OMP_NUM_THREADS")
    assert lint[1:4] == ["-m", "ruff", "check"] and mode == "quick"
    # a notebook's cells share one kernel: the workers must take whole files, never split a notebook
    assert cmd[cmd.index("-n") + 1] == str(tasks.TEST_WORKERS) and cmd[cmd.index("--dist") + 1] == "loadfile"
    assert cmd.index("notebooks") < cmd.index("tests")
    assert threads == "1"   # one torch thread per worker (and its notebook kernels): two workers, two cores
    calls.clear()
    tasks.test(["--", "tests", "-k", "paths"])
    cmd = calls[-1][0]
    assert cmd[3:6] == ["tests", "-k", "paths"] and "-n" not in cmd
    assert envs[-1].get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")   # one process: the default


def test_tasks_refuse_unknown_options_and_names_before_running_anything(monkeypatch, tmp_path, capsys):
    tasks, calls = _tasks_with_recorded_commands(monkeypatch)
    with pytest.raises(SystemExit, match="run: unknown option --no-record"):
        tasks.run(["--no-record"])
    with pytest.raises(SystemExit, match="no notebook matches 'xyz'; the notebooks are: 01_flow_matching_2d.*07_"):
        tasks.run(["xyz"])
    with pytest.raises(SystemExit, match=r"only notebooks 04, 05 can be given here, got \['01'\]"):
        tasks.rehearse(["--celeba", str(tmp_path), "01"])
    with pytest.raises(SystemExit, match="rehearse: unknown option --full"):
        tasks.rehearse(["--celeba", str(tmp_path), "--full"])
    assert calls == []


def test_run_notebooks_writes_only_under_out_unless_recording(monkeypatch, tmp_path):
    """`python3 tasks.py run` leaves tracked files alone: without --record, run_notebooks writes under --out only;
    with --record, the notebook's metadata and the README's table. On a stand-in notebook and README."""
    import nbformat

    rn = _run_notebooks_module()
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("assert 1 + 1 == 2")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["lfm"] = {"quick_budget_s": 60}
    path = folder / "00_standin.ipynb"
    path.write_text(json.dumps(nb, indent=1) + "\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- runtimes:begin -->\nold\n<!-- runtimes:end -->\n")
    monkeypatch.setattr(rn, "NOTEBOOKS", folder)
    monkeypatch.setattr(rn, "README", readme)
    monkeypatch.setenv("LFM_MODE", "quick")
    before = {p: p.read_bytes() for p in (path, readme)}
    assert rn.main(["--out", str(tmp_path / "build"), "00"]) == 0
    assert {p: p.read_bytes() for p in (path, readme)} == before
    summary = json.loads((tmp_path / "build" / "summary.json").read_text())
    assert [r["notebook"] for r in summary] == [path.name] and summary[0]["mode"] == "quick"
    assert (tmp_path / "build" / "notebooks" / path.name).is_file()
    assert rn.main(["--out", str(tmp_path / "build"), "--record", "00"]) == 0
    assert json.loads(path.read_text())["metadata"]["lfm"]["runtime"]["quick"]["seconds"] > 0
    assert "| 00 | " in readme.read_text() and "\nold\n" not in readme.read_text()
    monkeypatch.setenv("LFM_MODE", "pretrain")   # a pretraining run is not a measurement of quick mode
    assert rn.main(["--out", str(tmp_path / "build"), "--record", "00"]) == 2
    monkeypatch.setenv("LFM_MODE", "fast")
    assert rn.main(["--out", str(tmp_path / "build"), "00"]) == 2
    assert rn.main(["--out", str(tmp_path / "build"), "01"]) == 2   # no such notebook in the folder


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_records_its_measured_times(path):
    runtime = json.loads(path.read_text())["metadata"]["lfm"].get("runtime", {})
    assert set(runtime) <= {"quick", "full", "rehearsal"}, runtime
    assert "quick" in runtime, "measure quick mode (python3 tasks.py run)"
    for mode, entry in runtime.items():
        assert entry["seconds"] > 0 and "CPU cores" in entry["machine"], (mode, entry)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", entry["date"]), (mode, entry)


def test_readme_runtime_table_is_the_one_built_from_the_notebooks_metadata():
    table = _run_notebooks_module().runtime_table()
    block = README.split("<!-- runtimes:begin -->\n")[1].split("\n<!-- runtimes:end -->")[0]
    assert block == table, "the README's runtime table is stale: run `python3 tasks.py readme`"
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        quick = nb["metadata"]["lfm"]["runtime"]["quick"]["seconds"]
        assert f"| {path.name[:2]} | {quick:.0f} s" in table or f"| {path.name[:2]} | {quick / 60:.1f} min" in table


def test_record_writes_only_the_metadata_and_refuses_failed_runs(tmp_path):
    import datetime

    rn = _run_notebooks_module()
    copy = tmp_path / "notebooks"
    copy.mkdir()
    for nb in NOTEBOOKS[:2]:
        (copy / nb.name).write_text(nb.read_text())
    target = copy / NOTEBOOKS[0].name
    before = json.loads(target.read_text())
    rn.record(target, {"seconds": 12.5, "error": None, "peak_rss_mib": 321}, "rehearsal",
              when=datetime.date(2030, 1, 2))
    after = json.loads(target.read_text())
    entry = after["metadata"]["lfm"]["runtime"]["rehearsal"]
    assert entry["seconds"] == 12.5 and entry["date"] == "2030-01-02" and entry["peak_rss_mib"] == 321
    assert after["cells"] == before["cells"]
    del after["metadata"]["lfm"]["runtime"]["rehearsal"]
    assert after == before
    assert target.read_text().endswith("}\n") and '\n "cells": [' in target.read_text()  # the committed layout
    with pytest.raises(ValueError, match="failed"):
        rn.record(target, {"seconds": 1.0, "error": "AssertionError"}, "quick")
    with pytest.raises(ValueError, match="mode"):
        rn.record(target, {"seconds": 1.0, "error": None}, "slow")

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- runtimes:begin -->\nold\n<!-- runtimes:end -->\nrest\n")
    assert rn.update_readme(readme, copy) is True
    text = readme.read_text()
    assert "12 s; " in text and "peak memory 321 MiB" in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert rn.update_readme(readme, copy) is False  # already current
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="runtimes:begin"):
        rn.update_readme(readme, copy)


def _make_lab_module():
    return _load_script(ROOT / "scripts" / "make_lab.py")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_version_blanks_every_solution_and_keeps_everything_before_it(path):
    ml = _make_lab_module()
    full = json.loads(path.read_text())
    lab, n = ml.student_version(full, path.name)
    marked = sum("".join(c["source"]).count("### BEGIN SOLUTION") + "".join(c["source"]).count("<!-- BEGIN SOLUTION")
                 for c in full["cells"])
    assert n == marked > 0
    assert lab["metadata"]["lfm"]["lab"] == {"student_version": True, "blanks": n}
    text = json.dumps(lab)
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    first = ml.first_blank(lab)
    assert first is not None
    assert lab["cells"][:first] == full["cells"][:first], "up to its first blank a student version is the full one"
    assert len(lab["cells"]) == len(full["cells"])
    for c_lab, c_full in zip(lab["cells"], full["cells"], strict=True):
        if "BEGIN SOLUTION" not in "".join(c_full["source"]):
            assert c_lab == c_full
        elif c_lab["cell_type"] == "code":
            body = "".join(c_lab["source"])
            assert "raise NotImplementedError()" in body
            compile(body, f"{path.name} (student)", "exec")  # still valid Python


def test_student_version_keeps_code_around_a_marked_block_and_refuses_bad_markers():
    ml = _make_lab_module()
    nb = {"cells": [
        {"cell_type": "code", "metadata": {}, "outputs": [{"output_type": "stream"}], "execution_count": 3,
         "source": ["import math\n", "def f(x):\n", "    ### BEGIN SOLUTION\n", "    return x + 1\n",
                    "    ### END SOLUTION\n", "print(f(1))"]},
        {"cell_type": "markdown", "metadata": {}, "source": ["**Answer.**\n<!-- BEGIN SOLUTION -->\nBecause.\n",
                                                           "<!-- END SOLUTION -->"]},
        {"cell_type": "raw", "metadata": {}, "source": ["### BEGIN SOLUTION"]},
    ], "metadata": {}}
    lab, n = ml.student_version(nb)
    assert n == 2
    assert "".join(lab["cells"][0]["source"]) == ("import math\ndef f(x):\n    # YOUR CODE HERE\n"
                                                  "    raise NotImplementedError()\nprint(f(1))")
    assert lab["cells"][0]["outputs"] == [] and lab["cells"][0]["execution_count"] is None
    assert "".join(lab["cells"][1]["source"]) == "**Answer.**\n*YOUR ANSWER HERE*"
    assert lab["cells"][2] == nb["cells"][2]  # raw cells are left alone
    assert nb["cells"][0]["outputs"], "the instructor version is not modified"
    namespace = {}
    with pytest.raises(NotImplementedError):
        exec("".join(lab["cells"][0]["source"]), namespace)
    for bad in (["### BEGIN SOLUTION\n", "x = 1"], ["x = 1\n", "### END SOLUTION"],
                ["### BEGIN SOLUTION\n", "### BEGIN SOLUTION\n", "### END SOLUTION"]):
        with pytest.raises(ValueError, match="cell 0"):
            ml.student_version({"cells": [{"cell_type": "code", "metadata": {}, "source": bad}]})
    with pytest.raises(TypeError, match="nb"):
        ml.student_version([])


def test_tasks_lab_writes_student_versions(tmp_path):
    import subprocess

    out = tmp_path / "lab"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_lab.py"), "--out", str(out), "06"], check=True,
                   capture_output=True)
    written = sorted(p.name for p in out.glob("*.ipynb"))
    assert written == [p.name for p in NOTEBOOKS if "06" in p.name]
    assert "NotImplementedError" in (out / written[0]).read_text()


def test_tasks_pretrain_refuses_notebooks_without_pretrained_networks():
    tasks = load_script(ROOT / "tasks.py", "tasks_module")
    with pytest.raises(SystemExit, match=r"only notebooks 04, 05 have pretrained networks, got \['07'\]"):
        tasks.pretrain(["07"])


def test_a_student_version_runs_up_to_its_first_blank_and_stops_there(monkeypatch):
    """Notebook 06 (the quickest), student version, executed in quick mode: every cell up to its first exercise's
    check runs, the blanked exercise included (it only defines the function), and that check fails: the exercise
    'is not written yet'."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    ml = _make_lab_module()
    path = next(p for p in NOTEBOOKS if p.name.startswith("06"))
    lab, _ = ml.student_version(json.loads(path.read_text()), path.name)
    first = ml.first_blank(lab)
    check = next(i for i, c in enumerate(lab["cells"]) if i > first and c["cell_type"] == "code"
                 and ml.CHECK.match("".join(c["source"]).split("\n", 1)[0].strip()))
    nb = nbformat.reads(json.dumps(lab), as_version=4)
    monkeypatch.setenv("LFM_MODE", "quick")
    monkeypatch.setenv("LFM_PROGRESS", "0")
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells[:check]):
            if cell.cell_type == "code":
                client.execute_cell(cell, i)
        with pytest.raises(CellExecutionError, match="is not written yet"):
            client.execute_cell(nb.cells[check], check)
