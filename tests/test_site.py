"""The course site: built from executed notebooks without running them again, and checked in a real browser.

The browser tests build a small site (two executed stand-in notebooks, two module pages, two benchmark reports) and
open every page of it in headless Chromium, as `python3 tasks.py site --check` does for the whole site; a
hand-written broken site shows that the check finds what it should.
"""

import base64
import io
import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
pytest.importorskip("sphinx")   # the site extra (Python 3.11+; tasks.py installs it)
pytest.importorskip("myst_nb")
build_site = pytest.importorskip("build_site")
check_site = pytest.importorskip("check_site")
run_notebooks = pytest.importorskip("run_notebooks")

NOTEBOOKS = run_notebooks.find_notebooks()
CHAPTERS = json.loads((ROOT / "docs" / "chapters.json").read_text())
REPO = build_site.repository()


def _chromium() -> str:
    """The browser, or a skip (a failure under CI=true, where `.ci/run` installs it)."""
    try:
        return check_site.find_chromium()
    except check_site.CheckError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (.ci/run installs it)")
        pytest.skip(str(exc))


def _png(colour=(200, 60, 30)) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (120, 80), colour).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def _standins(folder: Path) -> tuple[list[Path], Path]:
    """Two small notebooks as committed (no outputs) and as `tasks.py run` leaves them (executed), in the
    course's shape: a title cell with a Colab badge, math, a figure, an exercise with its solution and answer."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    badge = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             "(https://colab.research.google.com/github/someone/else/blob/main/notebooks/{name})")
    cells = {
        "01_standin.ipynb": [
            new_markdown_cell("# 01 · A stand-in chapter\n\n" + badge.format(name="01_standin.ipynb") +
                              "\n\nInline math $x_t = (1 - t)\\,x_0 + t\\,x_1$ and a display:\n\n"
                              "$$u_t = x_1 - x_0 .$$\n\nThe next chapter: [02](02_standin.ipynb)."),
            new_code_cell("print('hello')\nshow_figure()"),
            new_markdown_cell("## Exercises\n\n**1. Square it.** What is $a^2$ for $a = 3$?"),
            new_code_cell("# Exercise 1\n### BEGIN SOLUTION\nanswer = 3 ** 2\n### END SOLUTION\nprint(answer)"),
            new_markdown_cell("**Answer 1.**\n<!-- BEGIN SOLUTION -->\nNine, since $3^2 = 9$.\n"
                              "<!-- END SOLUTION -->"),
            new_markdown_cell("## References\n\n1. A paper."),
        ],
        "02_standin.ipynb": [
            new_markdown_cell("# 02 · Another stand-in\n\n" + badge.format(name="02_standin.ipynb") +
                              "\n\nSee [the first chapter](01_standin.ipynb) and "
                              "[a benchmark](../benchmarks/results/one_step.md); $\\mathcal N(0, I)$."),
            new_code_cell("x = 1\nx"),
        ],
    }
    outputs = {"print('hello')": [new_output("stream", name="stdout", text="hello\n"),
                                  new_output("display_data", data={"image/png": _png(),
                                                                   "text/plain": "<Figure>"})],
               "answer = 3": [new_output("stream", name="stdout", text="9\n")],
               "x = 1": [new_output("execute_result", data={"text/plain": "1"}, execution_count=1)]}
    committed, executed = folder / "notebooks", folder / "executed"
    committed.mkdir()
    executed.mkdir()
    paths = []
    for name, cs in cells.items():
        nb = new_notebook(cells=cs)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, committed / name)
        run = nbformat.from_dict(json.loads(json.dumps(nb)))
        for i, cell in enumerate(c for c in run.cells if c.cell_type == "code"):
            cell.execution_count = i + 1
            cell.outputs = next((o for key, o in outputs.items() if key in cell.source), [])
        nbformat.write(run, executed / name)
        paths.append(committed / name)
    return paths, executed


STANDIN_CHAPTERS = {"01": {"teaches": "a stand-in", "headline": {"cell": "print('hello')", "figure": 1,
                                                                 "caption": "a red rectangle"}},
                    "02": {"teaches": "another stand-in"}}


@pytest.fixture(scope="module")
def small_site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    paths, executed = _standins(folder)
    out = folder / "site"
    warnings = build_site.build(executed, out, folder / "src", notebook_paths=paths, info=STANDIN_CHAPTERS,
                                module_names=["paths", "mixtures"], report_names=["one_step", "latent_vs_pixel"])
    return out, warnings


def test_the_site_shows_the_executed_notebooks_with_colab_student_version_and_folded_solutions(small_site):
    out, warnings = small_site
    # nothing to warn about but the stand-in without a headline figure (lfm_core's docstrings have their own)
    assert [w for w in warnings if "standin" in w or "site-src" in w] == [
        "02_standin.ipynb: no headline figure (docs/chapters.json)"], warnings
    page = (out / "notebooks" / "01_standin.html").read_text()
    # the outputs as executed, not run again: the figure and the printed text
    assert "hello" in page and re.search(r'<img [^>]*src="\.\./_images/[^"]+\.png"', page)
    # the Colab button from pyproject.toml's repository (not the badge's), its image served by the site
    assert f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/01_standin.ipynb" in page
    assert "someone/else" not in page and "colab.research.google.com/assets" not in page
    # the solution's code and output, and the written answer, folded
    solution = page[page.index("# Exercise 1") - 3000:page.index("# Exercise 1")]
    opening = solution.split("<details")[-1][:80]
    assert "<details" in solution and "Show the solution" in solution and " open" not in opening
    assert re.search(r'<details class="solution">\s*<summary>Show the answer</summary>', page)
    # the student version to download, every solution blanked
    student = next((out / "_downloads").rglob("01_standin.ipynb"))
    text = student.read_text()
    assert "NotImplementedError" in text and "3 ** 2" not in text and '"outputs": []' in text
    assert re.search(r'href="\.\./_downloads/[0-9a-f]+/01_standin\.ipynb"', page)
    # MathJax from the site itself; no script or style sheet from another host on any page
    assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file() and "_static/mathjax/tex-chtml.js" in page
    for html in out.rglob("*.html"):
        assert not re.search(r'<(?:script|link|img)[^>]+(?:src|href)="(?:https?:)?//', html.read_text()), html
    index = (out / "index.html").read_text()
    assert 'href="notebooks/01_standin.html"' in index and "_static/gallery/01_standin.png" in index
    assert "a red rectangle" in index and "another stand-in" in index


def test_every_page_of_the_site_passes_the_browser_check(small_site, tmp_path):
    out, _ = small_site
    shots = tmp_path / "shots"
    report = check_site.check(out, shots, program=_chromium(), log=lambda *a: None)
    assert {page: found for page, found in report.items() if found} == {}
    pages = check_site.pages_of(out)
    assert len(report) == len(pages) + 1 and len(pages) >= 12   # every page, and the links
    assert {"notebooks/01_standin.html", "reference/paths.html", "benchmarks/results/one_step.html"} <= set(report)
    assert len(list(shots.glob("*.png"))) == len(pages)
    assert (shots / "notebooks__01_standin.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_browser_check_finds_what_is_broken(tmp_path):
    """A hand-written page with one of each fault: each is reported, and nothing is asked of another host's
    server (the browser resolves no name but 127.0.0.1)."""
    (tmp_path / "index.html").write_text(
        '<html><head><title>broken</title><script src="http://cdn.example.invalid/x.js"></script></head><body>'
        '<img src="missing.png"><a href="nowhere.html">a</a> <a href="index.html#nope">b</a> <a id="here"></a>'
        '<a href="#here">c</a> <a href="https://example.org/">d</a>'
        '<span class="math">\\(x\\)</span><p>raw $x^2$ left here</p><script>console.error("boom")</script>'
        "</body></html>")
    report = check_site.check(tmp_path, None, program=_chromium(), log=lambda *a: None)
    found = "\n".join(report["index.html"])
    for fault in ("request to another host: http://cdn.example.invalid/x.js", "broken image", "HTTP 404",
                  "untypeset math: \\(x\\)", "TeX left in the text: raw $x^2$", "console error: boom"):
        assert fault in found, (fault, found)
    links = "\n".join(report["(links)"])
    assert "missing page or file: http://127.0.0.1" in links and "nowhere.html" in links
    assert "missing anchor" in links and "#nope" in links
    assert "#here" not in links and "example.org" not in links   # a good anchor; other sites are never requested


def test_a_notebook_with_an_error_stops_the_build_and_a_stale_one_is_named(tmp_path):
    paths, executed = _standins(tmp_path)
    nb = json.loads((executed / paths[1].name).read_text())
    nb["cells"][1]["outputs"] = [{"output_type": "error", "ename": "AssertionError", "evalue": "bad", "traceback": []}]
    (executed / paths[1].name).write_text(json.dumps(nb))
    with pytest.raises(build_site.SiteError, match=r"02_standin.ipynb has errors .*cell 1: AssertionError: bad"):
        build_site.stage(executed, tmp_path / "src", notebook_paths=paths, info=STANDIN_CHAPTERS, module_names=[],
                         report_names=[])
    nb["cells"][1]["outputs"], nb["cells"][1]["source"] = [], "x = 2"
    (executed / paths[1].name).write_text(json.dumps(nb))
    (executed / paths[0].name).unlink()
    warnings = build_site.stage(executed, tmp_path / "src", notebook_paths=paths, info=STANDIN_CHAPTERS,
                                module_names=[], report_names=[])
    assert any("01_standin.ipynb has no executed copy" in w for w in warnings)
    assert any("02_standin.ipynb changed since it was executed" in w for w in warnings)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_chapter_has_its_line_and_a_headline_figure_cell(path):
    chapter = CHAPTERS[path.name[:2]]
    assert chapter["teaches"] and chapter["headline"]["caption"]
    nb = json.loads(path.read_text())
    i = build_site.headline_cell(nb, chapter["headline"])   # exactly one code cell has that piece of source
    assert nb["cells"][i]["cell_type"] == "code"
    assert set(CHAPTERS) == {p.name[:2] for p in NOTEBOOKS}


def test_the_reference_table_has_a_row_for_every_module_of_lfm_core():
    table = (ROOT / "docs" / "reference.md").read_text()
    rows = re.findall(r"^\| \[`(\w+)`\]\(\.\./lfm_core/(\w+)\.py\) \|", table, re.M)
    assert all(a == b for a, b in rows)
    assert sorted(a for a, _ in rows) == build_site.modules(), "add a row for the new module to docs/reference.md"


def test_the_page_of_a_notebook_folds_every_solution_and_points_colab_at_pyproject_repository():
    path = NOTEBOOKS[0]
    nb = json.loads(path.read_text())
    page = build_site.page_notebook(nb, path.name, "owner/fork")
    first = "".join(page["cells"][0]["source"])
    assert f"https://colab.research.google.com/github/owner/fork/blob/main/notebooks/{path.name}" in first
    assert "colab-badge.svg)" in first and "assets/colab-badge" not in first
    assert f"{{download}}`Student version <../lab/{path.name}>`" in first
    for before, after in zip(nb["cells"], page["cells"], strict=True):
        src = "".join(before["source"])
        if before["cell_type"] == "code" and "### BEGIN SOLUTION" in src:
            assert "hide-cell" in after["metadata"]["tags"]
            out = "".join(after["source"])
            kept = [ln for ln in src.split("\n") if ln.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION")]
            assert "SOLUTION" not in out and out.split("\n") == kept
        elif "<!-- BEGIN SOLUTION -->" in src:
            out = "".join(after["source"])
            assert '<details class="solution">' in out and "</details>" in out and "BEGIN SOLUTION" not in out
        else:
            assert after == before or before is nb["cells"][0]
    assert json.loads(path.read_text()) == nb   # the notebook itself is left as it was
