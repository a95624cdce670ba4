#!/usr/bin/env python3
"""Open every page of the built site in headless Chromium and fail on what a reader would see broken.

    python scripts/check_site.py [--site build/site] [--shots build/site-shots]   # python3 tasks.py site --check

The site is served from 127.0.0.1 (a port the system picks) and each HTML page is opened in Debian's ``chromium``
(``--headless``, driven over the DevTools protocol by ``websocket-client``; ``LFM_CHROMIUM`` names another
program). The browser resolves no host name but 127.0.0.1, so nothing leaves the machine. A page fails on

* a broken image (one that did not load, or a same-site image the server does not have),
* a failed request (a missing script, style sheet or font: an HTTP error or a failed load),
* a request to any other host (a CDN, a font service, a tracker),
* math left untypeset (an element of class ``math`` without MathJax's output, or ``$...$``, ``\\(...\\)`` left in
  the text) or a MathJax error,
* a console error or an uncaught exception,

and the site fails on a link to a page, file or anchor of the site that does not exist. A screenshot of the top of
every page (1280 x 1000) is saved to ``--shots`` for a person to look at. Exits 1 listing the problems, page by page.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

LOCAL_HOSTS = {"127.0.0.1"}
SKIP_DIRS = {"_static", "_sources", "_downloads", "_images"}
WIDTH, HEIGHT = 1280, 1000

# runs in each page once MathJax has finished: what the checks need from the DOM
PAGE_SCRIPT = r"""
(() => {
  const skip = 'pre, code, script, style, textarea, mjx-container, .math, .highlight, .output, .cell_output';
  const raw = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const tex = /\$[^$\s][^$]*\$|\\\(|\\\[/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (tex.test(n.textContent) && !n.parentElement.closest(skip)) raw.push(n.textContent.trim().slice(0, 80));
  }
  return {
    title: document.title,
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    images: [...document.images].map(i => ({src: i.currentSrc || i.src, broken: i.complete && i.naturalWidth === 0})),
    untypeset: [...document.querySelectorAll('.math')].filter(e => !e.querySelector('mjx-container'))
                 .map(e => e.textContent.trim().slice(0, 80)),
    mathjax_errors: [...document.querySelectorAll('mjx-merror')]
                 .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 80)),
    typeset: document.querySelectorAll('mjx-container').length,
    ids: [...document.querySelectorAll('[id]')].map(e => e.id)
           .concat([...document.querySelectorAll('a[name]')].map(e => e.name)),
    raw_tex: raw,
  };
})()
"""

# resolves once MathJax (when the page loads it) has typeset the page
MATHJAX_DONE = """
(async () => {
  for (let i = 0; i < 100 && window.MathJax && !(MathJax.startup && MathJax.startup.promise); i++)
    await new Promise(r => setTimeout(r, 50));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  return true;
})()
"""


class CheckError(Exception):
    """The check could not run (no browser, no site): not a verdict on the site."""


def find_chromium() -> str:
    """``LFM_CHROMIUM``, else ``chromium`` (Debian) or ``chromium-browser`` on the PATH."""
    for name in filter(None, (os.environ.get("LFM_CHROMIUM"), "chromium", "chromium-browser")):
        found = shutil.which(name)
        if found:
            return found
    raise CheckError("no chromium found: install Debian's chromium (apt-get install chromium) or set LFM_CHROMIUM")


class Server:
    """The site served over HTTP on 127.0.0.1 (a free port), in a thread, quietly."""

    def __init__(self, root: Path):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Quiet, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol (one websocket, flattened sessions)."""

    def __init__(self, program: str, timeout: float = 60.0):
        import websocket  # websocket-client

        self.profile = tempfile.mkdtemp(prefix="lfm-chromium-")
        args = [program, "--headless=new", "--disable-gpu", "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--window-size={WIDTH},{HEIGHT}",
                "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")   # Chromium refuses to run as root with its sandbox
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:]
                raise CheckError(f"{program} exited with {self.proc.returncode}: {err}")
            if time.monotonic() > deadline:
                self.close()
                raise CheckError(f"{program} did not open its DevTools port within {timeout:.0f} s")
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=timeout, suppress_origin=True)
        self.timeout, self.next_id, self.events = timeout, 0, []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False,
                  session=True)

    def send(self, method: str, session: bool = False, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise CheckError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)
        raise CheckError(f"{method}: no answer within {self.timeout:.0f} s")

    def wait_for(self, method: str) -> None:
        """Read events until one named ``method`` arrives (earlier ones stay in ``events``)."""
        if any(e["method"] == method for e in self.events):
            return
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            event = json.loads(self.ws.recv())
            if "method" in event:
                self.events.append(event)
                if event["method"] == method:
                    return
        raise CheckError(f"no {method} within {self.timeout:.0f} s")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", session=True, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise CheckError(f"the check's script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)   # the browser and the helpers it started, nothing else
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)


def _is_local(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme not in ("http", "https", "ws", "wss") or parts.hostname in LOCAL_HOSTS


def problems_of_events(events: list[dict], base: str) -> list[str]:
    """Failed requests, requests to other hosts and console errors, from the DevTools events of one page load."""
    found, urls = [], {}
    for e in events:
        method, p = e["method"], e.get("params", {})
        if method == "Network.requestWillBeSent":
            url = p["request"]["url"]
            urls[p["requestId"]] = url
            if not _is_local(url):
                found.append(f"request to another host: {url}")
        elif method == "Network.responseReceived" and p["response"]["status"] >= 400:
            found.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
        elif method == "Network.loadingFailed":
            url = urls.get(p["requestId"], base)
            if _is_local(url) and p.get("errorText") != "net::ERR_ABORTED":   # other hosts: reported above
                found.append(f"failed to load {url}: {p.get('errorText')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            found.append(f"console error: {text[:200]}")
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            found.append(f"uncaught exception: {d.get('exception', {}).get('description', d.get('text'))[:200]}")
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            found.append(f"console error: {p['entry']['text'][:200]} ({p['entry'].get('url', '')})")
    return list(dict.fromkeys(found))


def pages_of(site: Path) -> list[Path]:
    """Every HTML page of the site, relative to it (the theme's and Sphinx's asset folders aside)."""
    return sorted(p.relative_to(site) for p in site.rglob("*.html") if not SKIP_DIRS & set(p.relative_to(site).parts))


def _target(site: Path, url: str, base: str) -> Path | None:
    """The file of the site a same-site URL points at (``/`` is ``index.html``), or None when it is not one."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)[len(urllib.parse.urlsplit(base).path):]
    file = site / path
    if file.is_dir():
        file = file / "index.html"
    return file


def check(site: Path, shots: Path | None, program: str | None = None, log=print) -> dict:
    """Open every page of ``site``; returns ``{page: [problems]}`` (the site's links under ``"(links)"``)."""
    site = site.resolve()
    if not (site / "index.html").is_file():
        raise CheckError(f"{site} has no index.html: build the site first (python3 tasks.py site)")
    program = program or find_chromium()
    if shots is not None:
        shutil.rmtree(shots, ignore_errors=True)
        shots.mkdir(parents=True)
    report, ids, links = {}, {}, {}
    start = time.perf_counter()
    with Server(site) as server:
        browser = Browser(program)
        try:
            for page in pages_of(site):
                url = server.url + page.as_posix()
                browser.events.clear()
                browser.send("Page.navigate", session=True, url=url)
                browser.wait_for("Page.loadEventFired")
                browser.evaluate(MATHJAX_DONE)
                time.sleep(0.05)
                info = browser.evaluate(PAGE_SCRIPT)
                browser.send("Runtime.evaluate", session=True, expression="1")   # collect the events so far
                found = problems_of_events(browser.events, server.url)
                found += [f"broken image: {i['src']}" for i in info["images"] if i["broken"]]
                found += [f"missing image: {i['src']}" for i in info["images"]
                          if i["src"].startswith(server.url) and not _target(site, i["src"], server.url).is_file()]
                found += [f"untypeset math: {m}" for m in info["untypeset"]]
                found += [f"MathJax error: {m}" for m in info["mathjax_errors"]]
                found += [f"TeX left in the text: {t}" for t in info["raw_tex"]]
                report[page.as_posix()] = list(dict.fromkeys(found))
                ids[page.as_posix()] = set(info["ids"])
                links[page.as_posix()] = info["links"]
                if shots is not None:
                    shot = browser.send("Page.captureScreenshot", session=True, format="png")
                    (shots / (page.as_posix().replace("/", "__").removesuffix(".html") + ".png")).write_bytes(
                        base64.b64decode(shot["data"]))
                log(f"  {page.as_posix()}: {len(found)} problem(s), {info['typeset']} formulas, "
                    f"{len(info['images'])} images")
        finally:
            browser.close()
        broken = []
        for page, hrefs in links.items():
            for href in hrefs:
                if not href.startswith(server.url):
                    continue   # other sites are linked, never requested: offline they cannot be checked
                file = _target(site, href, server.url)
                fragment = urllib.parse.urlsplit(href).fragment
                rel = file.relative_to(site).as_posix() if file.is_relative_to(site) else None
                if not file.is_file():
                    broken.append(f"{page}: link to a missing page or file: {href}")
                elif fragment and rel in ids and urllib.parse.unquote(fragment) not in ids[rel]:
                    broken.append(f"{page}: link to a missing anchor: {href}")
        report["(links)"] = list(dict.fromkeys(broken))
    log(f"checked {len(links)} pages in {time.perf_counter() - start:.0f} s")
    return report


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=root / "build" / "site")
    parser.add_argument("--shots", type=Path, default=root / "build" / "site-shots")
    args = parser.parse_args(argv)
    try:
        report = check(args.site, args.shots)
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bad = {page: found for page, found in report.items() if found}
    for page, found in bad.items():
        print(f"{page}:", file=sys.stderr)
        for line in found:
            print(f"    {line}", file=sys.stderr)
    n = sum(map(len, bad.values()))
    print(f"browser check: {len(report) - 1} pages, {n} problem(s); screenshots in {args.shots}")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
