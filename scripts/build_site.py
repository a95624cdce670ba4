#!/usr/bin/env python3
"""Build the course site from the executed notebooks: one page per notebook, the benchmark results, a reference of
``lfm_core`` from its docstrings, the data page and the development page, into build/site/.

    python scripts/build_site.py [--executed build/notebooks] [--out build/site]   # usually: python3 tasks.py site
    python scripts/build_site.py --readme-figures docs/figures                     # usually: python3 tasks.py figures

Nothing is executed: the pages show the outputs that ``python3 tasks.py run`` saved in ``--executed``. A notebook
with an error in its outputs stops the build; a notebook of ``notebooks/`` without an executed copy, or whose
executed copy has other cell sources than the committed one (it changed since the run), is named in a warning.

The sources are staged in ``--work`` (default build/site-src/): docs/ (conf.py, the hand-written pages, styles;
their links are written from docs/ into the repository, so that they work on GitHub too, and made the site's here),
each executed notebook with its solutions collapsed, its Colab button (from the repository URL in pyproject.toml)
and links to its student version (scripts/make_lab.py) and to itself, the pages of ``benchmarks/results/`` with
their figures, a page per module of ``lfm_core``, and ``data/README.md``. The landing page's table and gallery give
each notebook's one line and headline figure from docs/chapters.json (the figure chosen by a piece of the source
of the cell that draws it).
Sphinx (MyST-NB, the book theme) renders them offline; MathJax is served from the site (_static/mathjax/).

``--readme-figures DIR`` writes instead the README's strip: the headline figures marked ``"readme": true``,
scaled down to small PNGs. Tracked files are only written by that option.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_lab import student_version  # noqa: E402  (standard library only)
from run_notebooks import find_notebooks  # noqa: E402

BADGE = re.compile(r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]\([^)]*\)")
CODE_SOLUTION, CODE_END = "### BEGIN SOLUTION", "### END SOLUTION"
MD_BEGIN, MD_END = "<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->"


class SiteError(Exception):
    """The site cannot be built as asked (the message says why and what to run)."""


def repository(root: Path = ROOT) -> str:
    """``OWNER/REPO`` of the repository URL in pyproject.toml ([project.urls] Repository), its one place."""
    m = re.search(r'^Repository = "https://github\.com/([^"/]+/[^"/]+)"', (root / "pyproject.toml").read_text(), re.M)
    if not m:
        raise SiteError('pyproject.toml has no [project.urls] Repository = "https://github.com/OWNER/REPO"')
    return m.group(1)


def colab_url(repo: str, name: str) -> str:
    return f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{name}"


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _set_source(cell: dict, text: str) -> None:
    lines = text.split("\n")
    cell["source"] = [ln + "\n" for ln in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def title(nb: dict) -> str:
    """The notebook's title: the first heading of its first cell, without the ``#``."""
    for line in _source(nb["cells"][0]).splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    raise SiteError("the first cell of a notebook must start with its '# title'")


def chapters() -> dict:
    """docs/chapters.json: for each notebook number, what it teaches (one line, also the README's), its headline
    figure (``cell``: a piece of the source of the cell that draws it; ``figure``: which of that cell's figures,
    1 = the first; ``caption``), and whether the README's strip shows it (``readme``)."""
    return json.loads((DOCS / "chapters.json").read_text())


def headline_cell(nb: dict, spec: dict) -> int:
    """The index of the code cell whose source contains ``spec["cell"]`` (exactly one must)."""
    hits = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and spec["cell"] in _source(c)]
    if len(hits) != 1:
        raise SiteError(f"docs/chapters.json: {spec['cell']!r} is in {len(hits)} code cells, not exactly one")
    return hits[0]


def headline_png(nb: dict, spec: dict) -> bytes | None:
    """The PNG of the headline figure in an executed notebook, or None when that cell shows fewer figures."""
    cell = nb["cells"][headline_cell(nb, spec)]
    pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    k = spec.get("figure", 1)
    if len(pngs) < k:
        return None
    data = pngs[k - 1]
    return base64.b64decode("".join(data) if isinstance(data, list) else data)


def errors(nb: dict) -> list[str]:
    """``cell N: ErrorName: message`` for every error output of an executed notebook."""
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb["cells"])
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def is_stale(executed: dict, committed: dict) -> bool:
    """True when the executed copy's cell sources differ from the committed notebook's (it changed since the run)."""
    return [_source(c) for c in executed["cells"]] != [_source(c) for c in committed["cells"]]


def page_notebook(nb: dict, name: str, repo: str) -> dict:
    """The executed notebook as its page shows it: a row of links (Colab, student version, this notebook) in place of
    the first cell's Colab badge, every solution's code cell collapsed (with its outputs, without the grading
    markers) and every written answer inside a closed ``<details>``."""
    nb = json.loads(json.dumps(nb))
    links = (f'<div class="course-links">\n\n[![Open in Colab](../_static/colab-badge.svg)]({colab_url(repo, name)})\n'
             f"{{download}}`Student version <../lab/{name}>`\n{{download}}`Executed notebook <{name}>`\n\n</div>")
    first = _source(nb["cells"][0])
    new, n = BADGE.subn(lambda _m: links, first, count=1)
    if not n:   # no badge in the title cell: put the links under the title
        head, _, rest = first.partition("\n")
        new = f"{head}\n\n{links}\n{rest}"
    _set_source(nb["cells"][0], new)
    for cell in nb["cells"]:
        text = _source(cell)
        if cell["cell_type"] == "code" and CODE_SOLUTION in text:
            # the grading markers are for scripts/make_lab.py; the page shows the code between them
            _set_source(cell, "\n".join(ln for ln in text.split("\n") if ln.strip() not in (CODE_SOLUTION, CODE_END)))
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if "hide-cell" not in tags:
                tags.append("hide-cell")
            cell["metadata"]["mystnb"] = {"code_prompt_show": "Show the solution",
                                          "code_prompt_hide": "Hide the solution"}
        elif cell["cell_type"] == "markdown" and MD_BEGIN in text:
            text = text.replace(MD_BEGIN, '<details class="solution">\n<summary>Show the answer</summary>\n\n')
            _set_source(cell, text.replace(MD_END, "\n\n</details>\n"))
    return nb


def thumbnail(png: bytes, height: int, colours: int | None = None) -> bytes:
    """``png`` scaled to ``height`` pixels (never up), optionally reduced to a palette of ``colours``."""
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    if im.height > height:
        im = im.resize((round(im.width * height / im.height), height), Image.LANCZOS)
    if colours:
        im = im.quantize(colours, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    im.save(out, "PNG", optimize=True)
    return out.getvalue()


def readme_figures(executed: Path, out: Path, height: int = 240) -> list[Path]:
    """Write the README's strip (the headline figures marked ``readme``) to ``out``; returns the files written."""
    written = []
    for number, chapter in chapters().items():
        if not chapter.get("readme"):
            continue
        spec = chapter["headline"]
        path, = find_notebooks([f"{number}_"])
        copy = executed / path.name
        if not copy.exists():
            raise SiteError(f"{copy} is missing: run `python3 tasks.py run {number}` first")
        png = headline_png(json.loads(copy.read_text()), spec)
        if png is None:
            raise SiteError(f"{path.name}: the cell of docs/chapters.json shows fewer than {spec.get('figure', 1)} "
                            "figures")
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{path.stem}.png"
        target.write_bytes(thumbnail(png, height, colours=96))
        written.append(target)
    return written


def _gallery(items: list[tuple[str, str, str, str]]) -> str:
    """The landing page's gallery: (page, image, title, caption) per notebook, in raw HTML."""
    cards = [f'<a class="gallery-card" href="{page}"><img src="{img}" alt="{cap}"><span class="gallery-title">'
             f'{ttl}</span><span class="gallery-caption">{cap}</span></a>' for page, img, ttl, cap in items]
    return '<div class="gallery">\n' + "\n".join(cards) + "\n</div>"


def _toctree(caption: str, entries: list[str], hidden: bool = False, maxdepth: int = 1) -> str:
    opts = f":caption: {caption}\n:maxdepth: {maxdepth}\n" + (":hidden:\n" if hidden else "")
    return "```{toctree}\n" + opts + "\n" + "\n".join(entries) + "\n```\n"


def modules(root: Path = ROOT) -> list[str]:
    """The public modules of lfm_core, by file name."""
    return sorted(p.stem for p in (root / "lfm_core").glob("*.py") if not p.stem.startswith("_"))


def _unlink(text: str, folder: str, ext: str, keep: set[str]) -> str:
    """``text`` with its markdown links ``[label](folder/NAME.ext)`` to a NAME outside ``keep`` made plain labels."""
    pattern = re.compile(r"\[([^\]]*)\]\(" + re.escape(folder) + r"(\w+)" + re.escape(ext) + r"\)")
    return pattern.sub(lambda m: m.group(0) if m.group(2) in keep else m.group(1), text)


def stage(executed: Path, work: Path, notebook_paths: list[Path] | None = None, info: dict | None = None,
          module_names: list[str] | None = None, report_names: list[str] | None = None) -> list[str]:
    """Write the site's sources into ``work`` (emptied first); returns the warnings to show.

    By default the pages are those of every notebook of notebooks/ (``notebook_paths``: others, with
    ``info`` in place of docs/chapters.json), every module of lfm_core (``module_names``: only these) and every
    report of benchmarks/results/ (``report_names``: only these, by stem); the tests build a small site so."""
    warnings = []
    repo = repository()
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(DOCS, work, ignore=shutil.ignore_patterns("figures", "chapters.json", "*.md", "__pycache__"))
    info = chapters() if info is None else info
    (work / "notebooks").mkdir()
    (work / "lab").mkdir()
    (work / "_static" / "gallery").mkdir(parents=True, exist_ok=True)
    pages, gallery, rows = [], [], ["| notebook | what it teaches |", "|---|---|"]
    for path in notebook_paths if notebook_paths is not None else find_notebooks():
        copy = executed / path.name
        chapter = info.get(path.name[:2], {})
        if not copy.exists():
            rows.append(f"| {title(json.loads(path.read_text()))} (not built) | {chapter.get('teaches', '')} |")
            warnings.append(f"{path.name} has no executed copy in {executed}: its page is left out "
                            f"(python3 tasks.py run {path.name[:2]})")
            continue
        nb, committed = json.loads(copy.read_text()), json.loads(path.read_text())
        bad = errors(nb)
        if bad:
            raise SiteError(f"{copy} has errors in its outputs ({'; '.join(bad[:3])}): run it again "
                            f"(python3 tasks.py run {path.name[:2]})")
        if is_stale(nb, committed):
            warnings.append(f"{path.name} changed since it was executed: its page shows the old run "
                            f"(python3 tasks.py run {path.name[:2]})")
        (work / "notebooks" / path.name).write_text(json.dumps(page_notebook(nb, path.name, repo), indent=1))
        lab, _ = student_version(committed, path.name)
        (work / "lab" / path.name).write_text(json.dumps(lab, indent=1, ensure_ascii=False) + "\n")
        pages.append(f"notebooks/{path.stem}")
        rows.append(f"| [{title(nb)}](notebooks/{path.name}) | {chapter.get('teaches', '')} |")
        spec = chapter.get("headline")
        png = headline_png(nb, spec) if spec else None
        if png is None:
            warnings.append(f"{path.name}: no headline figure (docs/chapters.json)")
            continue
        (work / "_static" / "gallery" / f"{path.stem}.png").write_bytes(thumbnail(png, 360))
        gallery.append((f"notebooks/{path.stem}.html", f"_static/gallery/{path.stem}.png", title(nb),
                        spec.get("caption", "")))

    # benchmarks: every report of benchmarks/results/ with the figure of the same name
    results = work / "benchmarks" / "results"
    results.mkdir(parents=True)
    reports = [md for md in sorted((ROOT / "benchmarks" / "results").glob("*.md"))
               if report_names is None or md.stem in report_names]
    for md in reports:
        text = md.read_text()
        png = md.with_suffix(".png")
        if png.exists():
            shutil.copy(png, results / png.name)
            text = text.rstrip("\n") + f"\n\n## Figure\n\n![{md.stem}]({png.name})\n"
        (results / md.name).write_text(text)
    text = (DOCS / "benchmarks.md").read_text().replace("](../benchmarks/results/", "](results/")
    text = _unlink(text, "results/", ".md", {m.stem for m in reports})
    toc = _toctree("Reports", [f"results/{m.stem}" for m in reports])
    (work / "benchmarks" / "index.md").write_text(text + "\n" + toc)

    # the reference: the module table (docs/reference.md) and a page per module from its docstrings
    ref = work / "reference"
    ref.mkdir()
    names = [m for m in modules() if module_names is None or m in module_names]
    for name in names:
        heading = f"``lfm_core.{name}``"   # reStructuredText, the language of the docstrings that autodoc reads
        (ref / f"{name}.rst").write_text(f"{heading}\n{'=' * len(heading)}\n\n.. automodule:: lfm_core.{name}\n")
    text = re.sub(r"\]\(\.\./lfm_core/(\w+)\.py\)", r"](\1.rst)", (DOCS / "reference.md").read_text())
    text = _unlink(text, "", ".rst", set(names))
    (ref / "index.md").write_text(text + "\n" + _toctree("Modules", names, hidden=True))

    (work / "data").mkdir()
    shutil.copy(ROOT / "data" / "README.md", work / "data" / "README.md")
    (work / "development.md").write_text((DOCS / "development.md").read_text().replace("](../", "]("))

    index = (DOCS / "index.md").read_text().replace("<!-- gallery -->", _gallery(gallery))
    index = index.replace("<!-- chapters -->", "\n".join(rows))
    index += "\n" + _toctree("Course", pages, hidden=True)
    index += _toctree("More", ["benchmarks/index", "reference/index", "data/README", "development"], hidden=True)
    (work / "index.md").write_text(index)
    return warnings


def mathjax_parent() -> Path:
    """The folder holding ``mathjax/`` (MathJax 3) in the installed sphinx-mathjax-offline distribution."""
    from importlib import metadata

    try:
        dist = metadata.distribution("sphinx-mathjax-offline")
    except metadata.PackageNotFoundError as exc:
        raise SiteError("sphinx-mathjax-offline is not installed (python3 tasks.py site installs the site extra)") \
            from exc
    for f in dist.files or []:
        if f.name == "tex-chtml.js" and f.parent.name == "mathjax":
            return Path(dist.locate_file(f)).parent.parent
    raise SiteError("sphinx-mathjax-offline has no mathjax/tex-chtml.js")


def build(executed: Path, out: Path, work: Path, **only) -> list[str]:
    """Stage the sources and run Sphinx into ``out`` (emptied first); returns the warnings (ours and Sphinx's).
    ``only``: the keywords of :func:`stage` that build a smaller site."""
    start = time.perf_counter()
    warnings = stage(executed, work, **only)
    (work / "_site.json").write_text(json.dumps({"root": str(ROOT), "repository": f"https://github.com/{repository()}",
                                                 "mathjax_parent": str(mathjax_parent())}))
    if out.exists():
        shutil.rmtree(out)
    log = work / "sphinx-warnings.txt"
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-d", str(work / ".doctrees"), "-w", str(log),
           str(work), str(out)]
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode:
        raise SiteError(f"sphinx-build failed (exit {done.returncode}); its warnings are in {log}")
    (out / ".nojekyll").write_text("")   # GitHub Pages: serve _static/ and the other folders starting with _
    sphinx_warnings = [ln for ln in log.read_text().splitlines() if "WARNING" in ln or "ERROR" in ln]
    print(f"built {out} in {time.perf_counter() - start:.0f} s ({len(list(out.rglob('*.html')))} pages)")
    return warnings + sphinx_warnings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executed", type=Path, default=ROOT / "build" / "notebooks",
                        help="the executed notebooks (python3 tasks.py run writes them to build/notebooks/)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "site-src", help="where the sources are staged")
    parser.add_argument("--readme-figures", type=Path, metavar="DIR",
                        help="write the README's headline figures to DIR instead of building the site")
    args = parser.parse_args(argv)
    try:
        if args.readme_figures:
            for path in readme_figures(args.executed, args.readme_figures):
                print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
            return 0
        for line in build(args.executed, args.out, args.work):
            print("warning:", line, file=sys.stderr)
    except SiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
