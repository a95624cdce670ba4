"""The student versions stand on their own, read statically (no kernel): every notebook has at least three in-body
exercises with check cells, and no cell uses a name that only another cell's blanked solution defines."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path):
    return load_script(path, path.stem + "_for_lab_tests")


make_lab = _load(ROOT / "scripts" / "make_lab.py")
grade = _load(ROOT / "scripts" / "grade.py")
NOTEBOOKS = _load(ROOT / "scripts" / "run_notebooks.py").find_notebooks()
EXERCISE = re.compile(r"#\s*Exercise\s+(\d+)\s*$")


def _python(source: str) -> str:
    """A code cell's source without IPython's magics and shell lines (they are not Python)."""
    return "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.split("\n"))


def names(source: str) -> tuple[set[str], set[str]]:
    """(defined, used): the names a cell binds anywhere (assignments, defs, imports, parameters, loop and
    comprehension targets) and the names it reads. Scopes are ignored: a name bound anywhere counts as bound."""
    defined, used = set(), set()
    for node in ast.walk(ast.parse(_python(source))):
        if isinstance(node, ast.Name):
            (defined if isinstance(node.ctx, (ast.Store, ast.Del)) else used).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            defined |= set(node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            defined.add(node.name)
        elif isinstance(node, ast.MatchAs) and node.name:
            defined.add(node.name)
    return defined, used


def top_level(source: str) -> set[str]:
    """The names a cell binds at its top level (the notebook's global names): assignments, loop and ``with``
    targets, defs, classes and imports outside any function, class, lambda or comprehension."""
    bound = set()

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
            return
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(_python(source)))
    return bound


def leaks(instructor: dict, student: dict) -> dict[str, list[int]]:
    """The names that a cell reads (its solution included) and that only ANOTHER cell's solution defines, with the
    cells that read them: a student who writes that other solution their own way need not define them."""
    def code(nb):
        return ["".join(c["source"]) if c["cell_type"] == "code" else "" for c in nb["cells"]]

    full = [names(s) for s in code(instructor)]
    # a global that some solution binds and no student cell binds at its top level (a parameter or a loop variable
    # of the same name elsewhere does not define it)
    only_in_solutions = (set().union(*(top_level(s) for s in code(instructor)))
                         - set().union(*(top_level(s) for s in code(student))))
    found: dict[str, list[int]] = {}
    for i, (defined, used) in enumerate(full):
        for name in sorted((used & only_in_solutions) - defined):
            found.setdefault(name, []).append(i)
    return found


def test_the_leak_finder_finds_a_name_defined_only_in_a_solution():
    def cell(text):
        return {"cell_type": "code", "metadata": {}, "source": text, "outputs": [], "execution_count": None}

    nb = {"cells": [cell("# Exercise 1\n### BEGIN SOLUTION\nSTEPS = 3\n### END SOLUTION\ndef f(x):\n    return x"),
                    cell("for k in range(2):\n    print(f(k), k)"),
                    cell("# Exercise 2\n### BEGIN SOLUTION\nprint(STEPS)\n### END SOLUTION"),
                    cell("print(STEPS)\n%time f(1)")], "metadata": {}}
    student, _ = make_lab.student_version(nb)
    assert leaks(nb, student) == {"STEPS": [2, 3]}   # neither another exercise's solution nor a plain cell may use it
    nb["cells"].append(cell("def g(STEPS):\n    return STEPS"))   # a parameter of the same name does not define it
    assert leaks(nb, make_lab.student_version(nb)[0]) == {"STEPS": [2, 3]}
    nb["cells"][3]["source"] = "STEPS = 4\nprint(STEPS)"
    assert leaks(nb, make_lab.student_version(nb)[0]) == {}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_student_cell_uses_a_name_only_a_blanked_solution_defines(path):
    full = json.loads(path.read_text())
    student, _ = make_lab.student_version(full, path.name)
    found = leaks(full, student)
    assert not found, (f"{path.name}: names defined only inside another cell's solution are used (name: cells): "
                       f"{found}; define them outside the solution markers")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_has_three_in_body_exercises_with_checks(path):
    """An in-body exercise: a code cell ``# Exercise N`` holding a function (signature and docstring with a hint
    outside the solution markers), followed later by its check cell ``# Check: exercise N`` that calls
    ``exercises.check``; the checks stay in the student version."""
    full = json.loads(path.read_text())
    checks = grade.check_cells(full)
    cells = ["".join(c["source"]) for c in full["cells"]]
    in_body = []
    for number, at in checks.items():
        ex = [i for i, s in enumerate(cells) if EXERCISE.match(s.split("\n", 1)[0])
              and EXERCISE.match(s.split("\n", 1)[0]).group(1) == number]
        assert len(ex) == 1, f"{path.name}: check of exercise {number} but {len(ex)} '# Exercise {number}' cells"
        assert ex[0] < min(at), f"{path.name}: exercise {number}'s check comes before the exercise"
        skeleton = make_lab.student_version({"cells": [full["cells"][ex[0]]], "metadata": {}})[0]["cells"][0]
        tree = ast.parse(_python("".join(skeleton["source"])))
        functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert functions and all(ast.get_docstring(f) and "Hint" in ast.get_docstring(f) for f in functions), (
            f"{path.name}: exercise {number} should be a function with a docstring that gives a hint")
        assert all("exercises.check(" in cells[i] for i in at), f"{path.name}: exercise {number}'s check"
        in_body.append(int(number))
    assert len(in_body) >= 3, f"{path.name}: {len(in_body)} in-body exercises with checks, at least 3 expected"
    assert sorted(in_body) == list(range(1, len(in_body) + 1)), f"{path.name}: in-body exercises are numbered first"
    student = make_lab.student_version(full, path.name)[0]
    assert grade.check_cells(student) == checks, "the check cells stay in the student version"
