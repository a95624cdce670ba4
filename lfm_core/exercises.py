"""Checks for the notebooks' in-body exercises: run the student's code and compare it with the library's.

A notebook's exercise is a skeleton (a signature, a docstring with a hint, ``raise NotImplementedError()`` in the
student version) followed by a check cell whose first line is ``# Check: exercise N (what)``. The check cell calls
:func:`check`, which runs the student's code and compares each returned tensor with the library's result::

    max |yours - library| <= atol    for every returned tensor

It prints the largest difference when the code passes, and raises an ``AssertionError`` that says what differs
(and the exercise's hint) when it does not, or when the skeleton still raises ``NotImplementedError`` (one
that the library raises inside the student's code passes through unchanged).
``python3 tasks.py grade`` scores a submitted notebook by these check cells.

Copy with: (nothing else)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

_PACKAGE = Path(__file__).resolve().parent

__all__ = ["check"]


def _names(what) -> tuple[str, ...]:
    if isinstance(what, str):
        if not what:
            raise ValueError("what must name what the exercise returns, got an empty string")
        return (what,)
    if isinstance(what, tuple) and what and all(isinstance(w, str) and w for w in what):
        return what
    raise TypeError(f"what must be a non-empty string or a tuple of them, got {what!r}")


def check(number: int | str, what: str | tuple[str, ...], yours: Callable[[], object],
          reference: torch.Tensor | tuple[torch.Tensor, ...], atol: float, hint: str = "") -> float:
    """Run ``yours()`` (the student's code) and compare its result with ``reference`` (the library's).

    Args:
        number: the exercise's number, as in its check cell's first line.
        what: a name for each returned value (a string for one value, a tuple of strings for several).
        yours: a function of no arguments that calls the student's code and returns one tensor or a tuple of them.
        reference: the library's result, of the same structure.
        atol: the largest absolute difference accepted for every element: ``max |yours - library| <= atol``.
        hint: a sentence added to the failure message.

    Returns:
        The largest absolute difference over all returned tensors.

    Raises:
        AssertionError: the exercise is not written yet (``NotImplementedError``), returns the wrong number of
            values, a value that is not a tensor, a tensor of another shape, a non-finite value where the library's
            is finite, or a difference above ``atol``. The message names the value and the difference.
    """
    if isinstance(number, bool) or not isinstance(number, (int, str)) or str(number) == "":
        raise TypeError(f"number must be the exercise's number (an int or a string), got {number!r}")
    names = _names(what)
    if not callable(yours):
        raise TypeError(f"yours must be a function of no arguments that runs your code, got {type(yours).__name__}")
    refs = reference if isinstance(reference, tuple) else (reference,)
    if len(refs) != len(names) or not all(isinstance(r, torch.Tensor) for r in refs):
        raise TypeError(f"reference must be {len(names)} tensor(s), one per name in what={names}, got "
                        f"{type(reference).__name__}" + (f" of {len(refs)}" if isinstance(reference, tuple) else ""))
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not math.isfinite(atol) or atol < 0:
        raise ValueError(f"atol must be a finite number >= 0, got {atol!r}")
    if not isinstance(hint, str):
        raise TypeError(f"hint must be a string, got {type(hint).__name__}")

    try:
        mine = yours()
    except NotImplementedError as err:
        last = err.__traceback__
        while last.tb_next is not None:
            last = last.tb_next
        if _PACKAGE in Path(last.tb_frame.f_code.co_filename).resolve().parents:
            raise   # raised by the library itself (a case it does not support), not by an unwritten skeleton
        raise AssertionError(f"exercise {number} is not written yet: its function still raises "
                             "NotImplementedError") from None
    mine = tuple(mine) if isinstance(mine, (tuple, list)) else (mine,)
    assert len(mine) == len(refs), (f"exercise {number}: your function returns {len(mine)} value(s), "
                                    f"{len(refs)} expected ({', '.join(names)})")
    largest = 0.0
    for name, a, b in zip(names, mine, refs, strict=True):
        assert isinstance(a, torch.Tensor), f"exercise {number}: {name} should be a tensor, got {type(a).__name__}"
        assert a.shape == b.shape, (f"exercise {number}: {name} has shape {tuple(a.shape)}, "
                                    f"the library's {tuple(b.shape)}")
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        bad = ~torch.isfinite(a) & torch.isfinite(b)
        assert not bool(bad.any()), (f"exercise {number}: {name} has {int(bad.sum())} non-finite value(s) where the "
                                     f"library's are finite. {hint}".strip())
        same = (a == b) | (a.isnan() & b.isnan())   # equal infinities and NaN where the library has NaN: no difference
        diff = float((a - b).abs().masked_fill(same, 0.0).max()) if a.numel() else 0.0
        if len(names) > 1:
            print(f"exercise {number}, {name}: max |yours - library| = {diff:.1e}")
        assert diff <= atol, (f"exercise {number}: {name} differs from the library's by up to {diff:.3g} "
                              f"(tolerance {atol:.0e}). {hint}".strip())
        largest = max(largest, diff)
    print(f"exercise {number}: correct (max |yours - library| = {largest:.1e}, tolerance {atol:.0e})")
    return largest
