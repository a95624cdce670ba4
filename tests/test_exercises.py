"""lfm_core.exercises.check: the check cells of the notebooks' in-body exercises."""

import math
from pathlib import Path

import pytest
import torch

from lfm_core import exercises


def test_a_correct_answer_passes_and_reports_the_largest_difference(capsys):
    ref = (torch.tensor([1.0, 2.0]), torch.tensor([[3.0]]))
    diff = exercises.check(2, ("a", "b"), lambda: (ref[0] + 1e-7, ref[1].double()), ref, atol=1e-6)
    assert 0 < diff < 2e-7
    out = capsys.readouterr().out
    assert "exercise 2, a: max |yours - library|" in out and "exercise 2: correct" in out
    # a list counts as a tuple; equal infinities and NaN where the library has NaN are no difference
    ref2 = torch.tensor([math.inf, math.nan, 0.0])
    assert exercises.check("3b", "x", lambda: [ref2.clone()], ref2, atol=0.0) == 0.0


@pytest.mark.parametrize("yours, message", [
    (lambda: torch.tensor([1.0, 2.5]), r"exercise 1: x differs from the library's by up to 0\.5 \(tolerance 1e-03\)\. "
                                       r"Look at the second value\."),
    (lambda: (_ for _ in ()).throw(NotImplementedError()), "exercise 1 is not written yet"),
    (lambda: (torch.zeros(2), torch.zeros(2)), r"returns 2 value\(s\), 1 expected \(x\)"),
    (lambda: [1.0, 2.0], r"returns 2 value"),
    (lambda: 3.0, "x should be a tensor, got float"),
    (lambda: torch.zeros(2, 1), r"x has shape \(2, 1\), the library's \(2,\)"),
    (lambda: torch.tensor([1.0, math.nan]), r"x has 1 non-finite value\(s\) where the library's are finite"),
    (lambda: torch.tensor([1.0, -math.inf]), r"non-finite"),
])
def test_a_wrong_answer_fails_with_a_message_that_says_what_differs(yours, message):
    with pytest.raises(AssertionError, match=message):
        exercises.check(1, "x", yours, torch.tensor([1.0, 2.0]), atol=1e-3, hint="Look at the second value.")


def test_another_error_in_the_students_code_propagates():
    with pytest.raises(ZeroDivisionError):
        exercises.check(1, "x", lambda: 1 / 0, torch.zeros(1), atol=0.0)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(number=True), TypeError, "number must be"),
    (dict(number=""), TypeError, "number must be"),
    (dict(number=1.5), TypeError, "number must be"),
    (dict(what=""), ValueError, "what must name"),
    (dict(what=("a", "")), TypeError, "what must be"),
    (dict(what=["a"]), TypeError, "what must be"),
    (dict(yours=torch.zeros(2)), TypeError, "yours must be a function"),
    (dict(reference=[1.0, 2.0]), TypeError, "reference must be 1 tensor"),
    (dict(reference=(torch.zeros(2), torch.zeros(2))), TypeError, "reference must be 1 tensor"),
    (dict(atol=-1.0), ValueError, "atol must be"),
    (dict(atol=math.nan), ValueError, "atol must be"),
    (dict(atol="1e-3"), ValueError, "atol must be"),
    (dict(atol=True), ValueError, "atol must be"),
    (dict(hint=3), TypeError, "hint must be a string"),
])
def test_bad_arguments_are_refused_before_the_students_code_runs(kwargs, error, message):
    ran = []
    args = dict(number=1, what="x", yours=lambda: ran.append(1) or torch.zeros(2), reference=torch.zeros(2), atol=1e-3)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        exercises.check(**args)
    assert not ran


def test_a_not_implemented_error_of_the_library_is_not_an_unwritten_exercise():
    import lfm_core

    # a function whose code lives in the package, as a library function that does not support a case would
    where = str(Path(lfm_core.__file__).resolve().parent / "some_module.py")
    scope = {}
    exec(compile("def unsupported():\n    raise NotImplementedError('this case is not supported')\n", where, "exec"),
         scope)
    with pytest.raises(NotImplementedError, match="this case is not supported"):
        exercises.check(1, "x", lambda: scope["unsupported"](), torch.zeros(2), atol=0.0)
