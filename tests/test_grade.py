"""`python3 tasks.py grade`: a submitted notebook runs in quick mode and each exercise scores by its check cells
(scripts/grade.py). Most cases use a tiny notebook with two exercises; notebook 01 runs once, as a student who
solved two of its exercises, got one wrong and left one blank."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path):
    return load_script(path, path.stem + "_under_test")


grade = _load(ROOT / "scripts" / "grade.py")
make_lab = _load(ROOT / "scripts" / "make_lab.py")


def _cell(kind: str, text: str, **extra) -> dict:
    lines = text.split("\n")
    cell = {"cell_type": kind, "metadata": {}, "source": [ln + "\n" for ln in lines[:-1]] + [lines[-1]]}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    cell.update(extra)
    return cell


def _notebook(cells: list[dict]) -> dict:
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def tiny(double: str = "2 * x") -> dict:
    """The instructor version of a two-exercise notebook (``double`` is exercise 1's answer)."""
    return _notebook([
        _cell("markdown", "# A tiny course"),
        _cell("code", "import math"),
        _cell("code", f'# Exercise 1\ndef double(x):\n    """Twice x."""\n    ### BEGIN SOLUTION\n    return {double}\n'
                      "    ### END SOLUTION"),
        _cell("code", "# Check: exercise 1 (double)\n"
                      'assert double(21) == 42, f"double(21) should be 42, got {double(21)}"\n'
                      'print("exercise 1: correct")'),
        _cell("code", '# Exercise 2\ndef hypot(a, b):\n    """The length of (a, b)."""\n    ### BEGIN SOLUTION\n'
                      "    return math.sqrt(a * a + b * b)\n    ### END SOLUTION"),
        _cell("code", "# Check: exercise 2 (hypot)\n"
                      'assert abs(hypot(3, 4) - 5) < 1e-12, f"hypot(3, 4) should be 5, got {hypot(3, 4)}"\n'
                      'print("exercise 2: correct")'),
        _cell("code", 'print("the last cell ran")'),
    ])


def _write(path: Path, nb: dict) -> Path:
    path.write_text(json.dumps(nb, indent=1) + "\n")
    return path


def _grade(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "grade.py"), *map(str, paths)],
                          capture_output=True, text=True, timeout=300)


def test_instructor_version_gets_full_marks(tmp_path):
    result = _grade(_write(tmp_path / "instructor.ipynb", tiny()))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "exercise 1  1/1  passed (double): exercise 1: correct" in out
    assert "exercise 2  1/1  passed (hypot): exercise 2: correct" in out
    assert "total 2/2" in out


def test_student_version_scores_zero_and_a_wrong_answer_fails_its_check_alone(tmp_path):
    student, n = make_lab.student_version(tiny(), "tiny")
    assert n == 2
    wrong = tiny(double="2 * x + 1")
    result = _grade(_write(tmp_path / "student.ipynb", student), _write(tmp_path / "wrong.ipynb", wrong))
    assert result.returncode == 1, result.stdout + result.stderr
    student_part, wrong_part = result.stdout.split("wrong.ipynb")
    assert "student.ipynb" in student_part and "total 0/2" in student_part
    assert student_part.count("0/1  FAILED") == 2 and "NotImplementedError" in student_part
    # the wrong exercise fails with its check's message; the other one still scores
    assert "exercise 1  0/1  FAILED (double): AssertionError: double(21) should be 42, got 43" in wrong_part
    assert "exercise 2  1/1  passed" in wrong_part and "total 1/2" in wrong_part
    assert "all notebooks: 1/4" in result.stdout


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.ipynb", "no such file"),
    (lambda d: d, "is a folder"),
    (lambda d: _write_text(d / "notes.txt", "{}"), "name ends in .ipynb"),
    (lambda d: _write_text(d / "broken.ipynb", "{not json"), "not valid JSON"),
    (lambda d: _write_text(d / "list.ipynb", "[1, 2]"), "nbformat 4"),
    (lambda d: _write(d / "plain.ipynb", _notebook([_cell("code", "x = 1")])), "no check cells"),
])
def test_arguments_are_refused_with_a_clear_error_before_anything_runs(tmp_path, capsys, monkeypatch, make, message):
    path = make(tmp_path)
    assert grade.main([str(path)]) == 2
    assert message in capsys.readouterr().err
    tasks = _load(ROOT / "tasks.py")
    monkeypatch.setattr(tasks, "setup", lambda: pytest.fail("setup() ran before the arguments were checked"))
    with pytest.raises(SystemExit) as exc:
        tasks.grade([str(path)])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        tasks.grade([])
    assert exc.value.code == 2 and "usage" in capsys.readouterr().err


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_scores_read_an_executed_notebook():
    """Without a kernel: a passing check, one that raised, one that never ran, an exercise with two checks."""
    def ran(text, outputs):
        return _cell("code", text, execution_count=1, outputs=outputs)

    error = {"output_type": "error", "ename": "AssertionError", "evalue": "\x1b[31mexercise 2: off by 0.5\x1b[0m",
             "traceback": []}
    stream = {"output_type": "stream", "name": "stdout", "text": "max diff 0\nexercise 1: correct\n"}
    nb = _notebook([
        ran("# Check: exercise 1 (first)\ncheck()", [stream]),
        ran("# check: Exercise 2\ncheck()", [error]),
        _cell("code", "# Check: exercise 3 (never ran)\ncheck()"),
        ran("# Check: exercise 4 (two checks)\ncheck()", [stream]),
        ran("# Check: exercise 4\ncheck()", [{"output_type": "error", "ename": "NameError",
                                               "evalue": "name 'f' is not defined", "traceback": []}]),
        ran("# Exercise 5: no check, not scored", []),
    ])
    got = {s.exercise: s for s in grade.scores(nb)}
    assert list(got) == ["1", "2", "3", "4"]
    assert (got["1"].points, got["1"].what, got["1"].reason) == (1, "first", "exercise 1: correct")
    assert (got["2"].points, got["2"].reason) == (0, "AssertionError: exercise 2: off by 0.5")
    assert got["3"].points == 0 and "did not run" in got["3"].reason
    assert got["4"].points == 0 and "NameError" in got["4"].reason and "exercise's cell" in got["4"].reason
    text = grade.report("x.ipynb", list(got.values()), 1.0)
    assert text.endswith("total 1/4") and "exercise 2  0/1  FAILED: AssertionError" in text


def _unmark(source: str) -> str:
    """A solution cell as a student who solved it would submit it: the solution, without its markers."""
    return "".join(ln for ln in source.splitlines(keepends=True) if ln.strip() not in (make_lab.CODE_BEGIN,
                                                                                           make_lab.CODE_END))


def test_notebook_01_scores_each_exercise_on_its_own():
    """Notebook 01's student version with exercises 1 and 3 solved, 2 wrong (summed over the coordinates, twice the
    library's loss) and 4 blank: 2/4, each failure with its check's message, and every cell that fails is a check
    cell or a blank, so nothing after an exercise needs the student's code."""
    path = next((ROOT / "notebooks").glob("01_*.ipynb"))
    nb = json.loads(path.read_text())
    first_lines = {}
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        first_lines[src.split("\n", 1)[0]] = cell
    for k in ("1", "3"):
        cell = first_lines[f"# Exercise {k}"]
        cell["source"] = _unmark("".join(cell["source"]))
    cell = first_lines["# Exercise 2"]
    wrong = _unmark("".join(cell["source"])).replace("** 2).mean()", "** 2).sum(1).mean()")
    assert wrong != _unmark("".join(cell["source"]))
    cell["source"] = wrong
    student, _ = make_lab.student_version(nb, path.name)

    executed, stopped = grade.execute(student, path.parent)
    assert stopped is None
    got = {s.exercise: s for s in grade.scores(executed)}
    assert {k: s.points for k, s in got.items()} == {"1": 1, "2": 0, "3": 1, "4": 0}
    assert "differs from the library's by up to" in got["2"].reason and "Twice the library's" in got["2"].reason
    assert "exercise 4 is not written yet" in got["4"].reason
    assert got["1"].reason.startswith("exercise 1: correct (max |yours - library| = ")
    for i, cell in enumerate(executed.cells):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            assert grade.CHECK.match(cell.source.split("\n", 1)[0]) or "raise NotImplementedError()" in cell.source, (
                f"cell {i} failed although it is neither a check nor a blank:\n{cell.source[:300]}")


def test_make_lab_keeps_check_cells_and_refuses_a_solution_inside_one():
    nb = tiny()
    student, _ = make_lab.student_version(nb)
    checks = [c for c in nb["cells"] if "".join(c["source"]).startswith("# Check:")]
    assert checks and all(c in student["cells"] for c in checks)
    assert grade.check_cells(student) == grade.check_cells(nb) == {"1": [3], "2": [5]}
    nb["cells"][3]["source"] += ["\n### BEGIN SOLUTION\n", "x = 1\n", "### END SOLUTION"]
    with pytest.raises(ValueError, match="cell 3: a check cell holds a solution"):
        make_lab.student_version(nb, "tiny")


def test_the_reference_checks_run_instead_of_the_submitted_ones(tmp_path, capsys):
    """An edited check cell does not change the score: the instructor version's check cells run; a submission whose
    check cells do not pair up with them is refused before anything runs."""
    reference = _write(tmp_path / "course.ipynb", tiny())
    edited = tiny(double="2 * x + 1")
    edited["cells"][3]["source"] = "# Check: exercise 1 (double)\nprint('exercise 1: correct')"
    edited = _write(tmp_path / "edited.ipynb", edited)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "grade.py"), "--reference", str(reference),
                             str(edited)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"checks of {reference}" in result.stdout
    assert "exercise 1  0/1  FAILED (double): AssertionError: double(21) should be 42, got 43" in result.stdout

    missing = tiny()
    del missing["cells"][5]
    assert grade.main(["--reference", str(reference), str(_write(tmp_path / "missing.ipynb", missing))]) == 2
    assert "do not pair up" in capsys.readouterr().err
    assert grade.main(["--reference", str(reference), str(reference), str(reference)]) == 2
    assert "one notebook" in capsys.readouterr().err


def test_the_default_reference_is_the_course_notebook_of_the_same_name(tmp_path):
    course = next((ROOT / "notebooks").glob("01_*.ipynb"))
    assert grade.default_reference(tmp_path / course.name) == course   # e.g. build/lab/01_...ipynb
    assert grade.default_reference(course) is None
    assert grade.default_reference(tmp_path / "mine.ipynb") is None


@pytest.mark.parametrize("args", [["--reference"], ["--reference", "a.ipynb", "b.ipynb", "c.ipynb"], ["--full", "a"]])
def test_tasks_grade_refuses_malformed_options(args, capsys, monkeypatch):
    tasks = _load(ROOT / "tasks.py")
    monkeypatch.setattr(tasks, "setup", lambda: pytest.fail("setup() ran before the arguments were checked"))
    with pytest.raises(SystemExit) as exc:
        tasks.grade(args)
    assert exc.value.code == 2 and "usage" in capsys.readouterr().err
