"""lfm_core.explore: the live control (ipywidgets) and the precomputed strip of the same values."""

import sys

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lfm_core import explore  # noqa: E402

widgets = pytest.importorskip("ipywidgets")


def _recording_draw():
    calls = []

    def draw(value):
        calls.append(value)
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, value if isinstance(value, (int, float)) else 1])

    return draw, calls


def test_slider_builds_a_selection_slider_over_numbers():
    draw, calls = _recording_draw()
    box = explore.slider(draw, [1, 2, 4, 0.5], name="Euler steps", value=2)
    control, view = box.children
    assert isinstance(control, widgets.SelectionSlider) and isinstance(view, widgets.VBox)
    picture, = view.children    # the one figure draw opened, as a PNG image
    assert isinstance(picture, widgets.Image) and picture.format == "png" and picture.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(control.options) == [("1", 1), ("2", 2), ("4", 4), ("0.5", 0.5)] and control.value == 2
    assert control.description == "Euler steps" and calls == [2]
    assert plt.get_fignums() == [], "the figure drawn for the slider is shown and closed"


def test_moving_the_slider_draws_each_value_once():
    draw, calls = _recording_draw()
    box = explore.slider(draw, [1, 2, 4], name="steps")
    control = box.children[0]
    first = box.children[1]
    control.value = 4
    assert calls == [1, 4] and box.children[1] is not first
    control.value = 1          # moving back: the kept output, no new call
    assert calls == [1, 4] and box.children[1] is first
    control.value = 2
    assert calls == [1, 4, 2]


def test_slider_shows_what_draw_prints_as_text_and_opens_no_output_widget(monkeypatch):
    opened = []
    monkeypatch.setattr(widgets, "Output", lambda *a, **k: opened.append(1))   # an Output widget would fail here

    def draw(value):
        print(f"FD <{value}> & more")
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        plt.subplots()                       # a second figure: a second image

    box = explore.slider(draw, [1, 2], name="steps")
    text, *pictures = box.children[1].children
    assert isinstance(text, widgets.HTML) and text.value == "<pre>FD &lt;1&gt; &amp; more\n</pre>"
    assert len(pictures) == 2 and all(isinstance(p, widgets.Image) for p in pictures)
    assert opened == [] and plt.get_fignums() == []


def test_slider_shows_an_error_while_moving_in_the_widget_and_raises_one_on_the_first_value():
    def draw(value):
        plt.subplots()                           # opened before the error: closed all the same
        if value == 3:
            raise ValueError("no such panel")
        print("drawn", file=sys.stderr)          # stderr shows as text too

    box = explore.slider(draw, [1, 3], name="steps")
    assert box.children[1].children[0].value == "<pre>drawn\n</pre>"
    box.children[0].value = 3
    text, = box.children[1].children
    assert "draw(3) failed" in text.value and "ValueError: no such panel" in text.value
    assert plt.get_fignums() == []
    with pytest.raises(ValueError, match="no such panel"):
        explore.slider(draw, [1, 3], name="steps", value=3)
    assert plt.get_fignums() == []


def test_slider_images_are_drawn_at_twice_the_resolution_and_shown_at_the_figure_size():
    def draw(value):
        plt.subplots(figsize=(3, 2), dpi=100)

    picture, = explore.slider(draw, [1], name="n").children[1].children
    width = int.from_bytes(picture.value[16:20], "big")
    assert 500 <= width <= 620 and picture.width == str(width // 2)   # 600 px wide, less the tight crop


def test_slider_gives_a_dropdown_for_other_values_and_says_what_it_is_on_a_static_page():
    seen = []
    box = explore.slider(seen.append, ["independent", "OT"], name="coupling")
    control = box.children[0]
    assert isinstance(control, widgets.Dropdown) and control.options == (("independent", "independent"), ("OT", "OT"))
    control.value = "OT"
    assert seen == ["independent", "OT"]
    bundle = box._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "live control of coupling" in bundle["text/plain"] and "strip above" in bundle["text/plain"]


def test_slider_without_ipywidgets_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)   # import ipywidgets now raises ImportError
    seen = []
    assert explore.slider(seen.append, [1, 2], name="steps") is None
    assert "pip install ipywidgets" in capsys.readouterr().out and seen == []


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(draw=3, values=[1], name="n"), TypeError, "draw must be a function"),
    (dict(draw=print, values="abc", name="n"), TypeError, "values must be a list"),
    (dict(draw=print, values=5, name="n"), TypeError, "values must be a list"),
    (dict(draw=print, values=[], name="n"), ValueError, "values must hold at least one"),
    (dict(draw=print, values=[[1], [2]], name="n"), TypeError, "values must be hashable"),
    (dict(draw=print, values=[1, 2, 1], name="n"), ValueError, "values must not repeat"),
    (dict(draw=print, values=[1, 2], name=""), TypeError, "name must be a non-empty string"),
    (dict(draw=print, values=[1, 2], name=None), TypeError, "name must be a non-empty string"),
    (dict(draw=print, values=[1, 2], name="n", value=3), ValueError, "value must be one of values"),
    (dict(draw=print, values=[1, 2], name="n", value=[1]), ValueError, "value must be one of values"),
])
def test_slider_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        explore.slider(kwargs.pop("draw"), kwargs.pop("values"), **kwargs)


def test_strip_draws_one_titled_panel_per_value():
    seen = []

    def draw_ax(ax, value):
        seen.append(value)
        ax.plot([0, 1], [0, value])

    fig = explore.strip(draw_ax, [1, 2, 4, 8, 0.25], name="Euler steps", ncols=3, suptitle="samples")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert seen == [1, 2, 4, 8, 0.25] and len(fig.axes) == 6 and len(visible) == 5
    assert [ax.get_title() for ax in visible] == ["Euler steps = 1", "Euler steps = 2", "Euler steps = 4",
                                                  "Euler steps = 8", "Euler steps = 0.25"]
    assert fig._suptitle.get_text() == "samples"
    assert tuple(fig.get_size_inches()) == pytest.approx((9.6, 6.4))
    plt.close(fig)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(draw_ax=None, values=[1], name="n"), TypeError, "draw_ax must be a function"),
    (dict(draw_ax=print, values=(), name="n"), ValueError, "values must hold at least one"),
    (dict(draw_ax=print, values=[1], name=" "), TypeError, "name must be a non-empty string"),
    (dict(draw_ax=print, values=[1], name="n", ncols=0), ValueError, "ncols must be a positive int"),
    (dict(draw_ax=print, values=[1], name="n", ncols=True), ValueError, "ncols must be a positive int"),
    (dict(draw_ax=print, values=[1], name="n", panel_size=(3, -1)), ValueError, "panel_size must be"),
    (dict(draw_ax=print, values=[1], name="n", panel_size=3), ValueError, "panel_size must be"),
])
def test_strip_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        explore.strip(kwargs.pop("draw_ax"), kwargs.pop("values"), **kwargs)


def test_panel_draws_what_the_strip_draws_for_the_slider():
    seen = []

    def draw_ax(ax, value):
        seen.append(value)
        ax.plot([0, 1], [0, value])

    titles = []
    draw = explore.panel(draw_ax, name="block size")
    box = explore.slider(lambda v: (draw(v), titles.append(plt.gcf().axes[0].get_title())), [4, 16],
                         name="block size")
    box.children[0].value = 16
    assert seen == [4, 16] and titles == ["block size = 4", "block size = 16"] and plt.get_fignums() == []
    with pytest.raises(TypeError, match="draw_ax must be a function"):
        explore.panel("not a function", name="n")
    with pytest.raises(TypeError, match="name must be a non-empty string"):
        explore.panel(draw_ax, name=3)
