"""Live controls for a notebook's central knob, and the same exploration as a precomputed strip.

The idea: a notebook has one knob worth seeing value by value (Euler steps, OT block size, jumps). Its cells compute
what the pictures need once; a small function draws the picture for one value, and serves two readers:

* with a running kernel (Jupyter, Colab), :func:`slider` shows a control over the values (a selection slider for
  numbers, a drop-down list otherwise) and redraws when it moves; each value is drawn once and kept, so moving back
  is instant. Without ``ipywidgets`` it prints how to install it (``pip install ipywidgets``) and returns ``None``.
* without a kernel (the course site, GitHub's renderer), :func:`strip` draws one panel per value in one figure,
  each titled with the knob's name and value: the exploration precomputed.

Usage, with ``draw_ax(ax, value)`` drawing one panel (:func:`panel` makes the slider's ``draw(value)`` from it;
any ``draw(value)`` that draws figures or prints will do)::

    explore.strip(draw_ax, [1, 2, 4, 8], name="Euler steps")           # the figure for every reader
    plt.show()
    explore.slider(explore.panel(draw_ax, name="Euler steps"), [1, 2, 4, 8], name="Euler steps")

Widget outputs change from run to run (their model ids): tag the cell ``nbval-ignore-output``.

Copy with: nothing else (``matplotlib``; ``ipywidgets`` for :func:`slider`).
"""

from __future__ import annotations

import html
import traceback
from collections.abc import Callable, Hashable, Sequence

__all__ = ["slider", "strip", "panel", "title"]


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"name must be a non-empty string naming the knob, got {name!r}")
    return name


def _check_callable(fn, arg: str, signature: str) -> None:
    if not callable(fn):
        raise TypeError(f"{arg} must be a function {signature}, got {type(fn).__name__}")


def _check_values(values) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"values must be a list or tuple of the knob's values, got {type(values).__name__}")
    values = list(values)
    if not values:
        raise ValueError("values must hold at least one value of the knob, got an empty sequence")
    bad = [v for v in values if not isinstance(v, Hashable)]
    if bad:
        raise TypeError(f"values must be hashable (numbers, strings, tuples), got {type(bad[0]).__name__}: {bad[0]!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"values must not repeat a value, got {values!r}")
    return values


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def title(name: str, value) -> str:
    """The title of a panel: ``"name = value"``."""
    return f"{name} = {_label(value)}"


def strip(draw_ax: Callable, values: Sequence, *, name: str, ncols: int | None = None,
          panel_size: tuple[float, float] = (3.2, 3.2), suptitle: str | None = None, **subplot_kw):
    """One figure with one panel per value: ``draw_ax(ax, value)`` draws each, titled ``"name = value"``.

    Args:
        draw_ax: a function ``(ax, value)`` drawing one panel (it may set its own title to add a number).
        values: the knob's values, in order; hashable and without repeats.
        name: the knob's name, as readers should see it.
        ncols: panels per row (default: all in one row); panel_size: (width, height) of a panel in inches.
        suptitle: a title over the whole strip; other keywords go to ``plt.subplots`` (``sharey=True``, ...).

    Returns:
        The matplotlib figure (``plt.show()`` shows it inline).
    """
    _check_callable(draw_ax, "draw_ax", "(ax, value) drawing one panel")
    values, name = _check_values(values), _check_name(name)
    if ncols is not None and (isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1):
        raise ValueError(f"ncols must be a positive int or None, got {ncols!r}")
    if (not isinstance(panel_size, (tuple, list)) or len(panel_size) != 2
            or not all(_is_number(s) and s > 0 for s in panel_size)):
        raise ValueError(f"panel_size must be (width, height) in inches, both > 0, got {panel_size!r}")
    import matplotlib.pyplot as plt

    ncols = min(ncols or len(values), len(values))
    nrows = -(-len(values) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False,
                             layout="constrained", **subplot_kw)
    for ax, value in zip(axes.flat[:len(values)], values, strict=True):
        ax.set_title(title(name, value))
        draw_ax(ax, value)
    for ax in axes.flat[len(values):]:
        ax.set_visible(False)
    if suptitle is not None:
        fig.suptitle(suptitle)
    return fig


def panel(draw_ax: Callable, *, name: str, size: tuple[float, float] = (4.5, 4.5)) -> Callable:
    """``draw(value)`` for :func:`slider`: one figure of one panel, drawn by ``draw_ax(ax, value)`` and titled as
    in :func:`strip`, so that the live control and the strip show the same picture."""
    _check_callable(draw_ax, "draw_ax", "(ax, value) drawing one panel")
    _check_name(name)

    def draw(value):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=size, layout="constrained")
        ax.set_title(title(name, value))
        draw_ax(ax, value)

    return draw


def _png_width(png: bytes) -> int:
    """The width in pixels of a PNG image (its IHDR chunk)."""
    return int.from_bytes(png[16:20], "big")


def _render(draw: Callable, value) -> tuple[str, list[bytes]]:
    """Call ``draw(value)``: what it printed (stdout and stderr), and each figure it opened as PNG bytes at twice the
    figure's resolution (sharp on high-density screens). The figures it opened are closed, also when it raises."""
    import contextlib
    import io

    import matplotlib.pyplot as plt

    before, text = set(plt.get_fignums()), io.StringIO()
    try:
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            draw(value)
        pictures = []
        for number in sorted(set(plt.get_fignums()) - before):
            fig, png = plt.figure(number), io.BytesIO()
            fig.savefig(png, format="png", bbox_inches="tight", dpi=2 * fig.dpi)
            pictures.append(png.getvalue())
    finally:
        for number in set(plt.get_fignums()) - before:
            plt.close(number)
    return text.getvalue(), pictures


def slider(draw: Callable, values: Sequence, *, name: str, value=None):
    """A live control over ``values`` that shows ``draw(value)`` for the value selected.

    Numbers get a selection slider, other values (strings, tuples) a drop-down list. Each value is drawn the first
    time it is selected and kept, so moving back shows it at once. ``draw`` should only draw (train nothing): it runs
    in the kernel while the reader moves the control. What it prints is shown as text and each figure it opens as a
    PNG image widget; an error drawing the first value is the cell's error, one while the control moves shows its
    traceback in the widget. There is no ``Output`` widget: nbclient (behind papermill and ``nbconvert --execute``)
    answers an ``Output`` widget's updates on the kernel's shell channel, which can leave it waiting out its whole
    cell timeout for a reply the kernel has already sent.

    Args:
        draw: a function ``(value)`` that draws one figure or prints (:func:`panel` makes one from ``draw_ax``).
        values: the knob's values, in order; hashable and without repeats.
        name: the knob's name, shown beside the control.
        value: the value shown first (default: the first of ``values``).

    Returns:
        The widget (an ``ipywidgets.VBox`` of the control and a ``VBox`` of the value's text and images); ``None``
        without ``ipywidgets`` (a message then says how to install it).
    """
    _check_callable(draw, "draw", "(value) drawing one figure or printing")
    values, name = _check_values(values), _check_name(name)
    value = values[0] if value is None else value
    if not isinstance(value, Hashable) or value not in values:
        raise ValueError(f"value must be one of values {values!r}, got {value!r}")
    try:
        import ipywidgets as widgets
    except ImportError:
        print(f"The live control of {name} needs ipywidgets: pip install ipywidgets, then restart the kernel. "
              "The strip above shows the same values.")
        return None

    class Live(widgets.VBox):
        def _repr_mimebundle_(self, **kwargs):   # where no widget can show (a static page), say what it is
            bundle = super()._repr_mimebundle_(**kwargs)
            bundle["text/plain"] = (f"A live control of {name} (it moves in Jupyter and on Colab).\n"
                                    "The strip above shows the same values.")
            return bundle

    style = {"description_width": "initial"}
    if all(_is_number(v) for v in values):
        control = widgets.SelectionSlider(options=[(_label(v), v) for v in values], value=value, description=name,
                                          continuous_update=False, style=style, layout={"width": "min(100%, 36em)"})
    else:
        control = widgets.Dropdown(options=[(_label(v), v) for v in values], value=value, description=name, style=style)
    outputs = {}
    box = Live([control])

    def view(text, pictures):
        parts = [widgets.HTML(f"<pre>{html.escape(text)}</pre>")] if text else []
        parts += [widgets.Image(value=png, format="png", width=str(_png_width(png) // 2)) for png in pictures]
        return widgets.VBox(parts)

    def show(selected):
        if selected not in outputs:
            outputs[selected] = view(*_render(draw, selected))
        box.children = (control, outputs[selected])

    def moved(change):   # an error while the reader moves the control shows in the widget, and is not kept
        try:
            show(change["new"])
        except Exception:
            box.children = (control, view(f"draw({change['new']!r}) failed:\n{traceback.format_exc()}", []))

    control.observe(moved, names="value")
    show(value)   # an error drawing the first value is the cell's error
    return box
