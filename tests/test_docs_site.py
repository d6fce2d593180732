"""The documentation site: generated from the code, built with --strict, offline, and working in
a browser (pages load with no failed request or console error, search finds things).

The site is built once per test process into a temporary folder with `mkdocs build --strict`,
or taken from $QKV_DOCS_SITE when `make test` has just built it. The browser tests need
Debian's chromium at /usr/bin/chromium and Playwright for Python (no browser is downloaded);
they are skipped with a reason without them.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def _hook():
    """docs/hooks/reference.py, the MkDocs hook that writes the generated pages."""
    spec = importlib.util.spec_from_file_location(
        "docs_reference_hook", ROOT / "docs" / "hooks" / "reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    given = os.environ.get("QKV_DOCS_SITE")
    if given:
        path = Path(given)
        if not path.is_absolute():
            path = ROOT / path
        assert (path / "index.html").is_file(), f"QKV_DOCS_SITE={given}: no built site there"
        return path
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    return out


# ---------------------------------------------------------------------------------------------
# Generated pages


def test_cli_reference_lists_every_command_and_option():
    from qkv.cli.main import build_parser

    text = _hook().cli_markdown()
    parser = build_parser()
    commands = _hook()._subcommands(parser)
    assert {name for name, _, _ in commands} >= {
        "explain",
        "train",
        "translate",
        "evaluate",
        "viz",
        "demo",
    }
    for name, _, sub in commands:
        assert f"## qkv {name}\n" in text
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text, f"qkv {name} {option} is missing from the CLI reference"


def test_config_reference_lists_every_key_with_its_default():
    import dataclasses as dc

    from qkv.models.builders import MODEL_KINDS, config_keys
    from qkv.translation.config import MODEL_PRESETS, RunConfig

    hook = _hook()
    text = hook.config_markdown()
    defaults = RunConfig().to_dict()
    for table in ("data", "train"):
        section = text.split(f"## [{table}]")[1].split("\n## ")[0]
        for key, value in defaults[table].items():
            assert re.search(rf"^\| `{key}` \| \w* \| {re.escape(hook._value(value))} \|", section, re.M), key
    for kind, (_, config_cls) in MODEL_KINDS.items():
        section = text.split(f'### kind = "{kind}"')[1].split("\n### ")[0]
        for f in dc.fields(config_cls):
            assert (f"| `{f.name}` |" in section) == (f.name in config_keys(kind)), f.name
    for preset in MODEL_PRESETS:
        assert f"| `{preset}` |" in text
    for table, key in hook.KEY_NOTES:  # hand-written notes only for keys that exist
        assert key in defaults[table], f"KEY_NOTES names [{table}] {key}, which is not a key any more"


def test_config_reference_lists_the_image_classifier_keys():
    import dataclasses as dc

    from qkv.models.builders import image_config_keys
    from qkv.models.vit import ViTConfig
    from qkv.vision.config import MODEL_PRESETS, RunConfig

    text = _hook().config_markdown().split("## Image classifiers (`--model vit`)")[1]
    defaults = RunConfig().to_dict()
    for table in ("data", "train"):
        section = text.split(f"### Vision `[{table}]`")[1].split("\n### ")[0]
        for key, value in defaults[table].items():
            assert re.search(
                rf"^\| `{key}` \| \w* \| {re.escape(_hook()._value(value))} \|", section, re.M
            ), key
    section = text.split('### kind = "vit"')[1].split("\n## ")[0]
    for f in dc.fields(ViTConfig):
        assert (f"| `{f.name}` |" in section) == (f.name in image_config_keys("vit")), f.name
    for preset in MODEL_PRESETS:
        assert f"| `{preset}` |" in text


def test_home_page_is_the_readme_with_site_links():
    text = _hook().readme_markdown()
    assert "](docs/" not in text
    assert "](getting-started.md)" in text


def test_make_docs_fails_on_warnings():
    """`make docs` builds with --strict; --quiet would hide the warnings that --strict counts."""
    recipe = re.search(r"^docs:.*?(?=^\S|\Z)", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M | re.S)
    assert recipe and "mkdocs build --strict" in recipe.group(0)
    assert "--quiet" not in recipe.group(0) and " -q" not in recipe.group(0)


# ---------------------------------------------------------------------------------------------
# The built site


class _Resources(HTMLParser):
    """Every URL a page loads by itself: src of any element, href of <link>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href") and a.get("rel") not in ("canonical", "alternate"):
            self.urls.append(a["href"])


def test_site_has_every_page(site):
    for page in (
        "index.html",
        "getting-started.html",
        "concepts/attention.html",
        "concepts/masks.html",
        "guides/long-sequences.html",
        "reference/api/masks.html",
        "reference/cli.html",
        "reference/config.html",
        "performance/index.html",
        "architecture.html",
        "contributing.html",
        "search/search_index.js",
    ):
        assert (site / page).is_file(), page
    api = (site / "reference/api/masks.html").read_text(encoding="utf-8")
    assert 'id="qkv.masks.sliding_window"' in api  # rendered from the docstrings


def test_site_loads_nothing_from_outside(site):
    """No font, script, style or image from the network: the site works offline."""
    outside = []
    for page in site.rglob("*.html"):
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8"))
        outside += [f"{page.relative_to(site)}: {u}" for u in parser.urls if re.match(r"(https?:)?//", u)]
    for css in site.rglob("*.css"):
        for url in re.findall(r"url\(\s*['\"]?((?:https?:)?//[^'\")]+)", css.read_text(encoding="utf-8")):
            outside.append(f"{css.relative_to(site)}: {url}")
    assert not outside, "\n".join(outside)


# ---------------------------------------------------------------------------------------------
# In a browser


def _playwright():
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium (make browser installs it)")
    return pytest.importorskip(
        "playwright.sync_api", reason="browser tests need playwright (pip install playwright)"
    )


@dataclasses.dataclass
class Visit:
    failed: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    outside: list[str] = dataclasses.field(default_factory=list)


@pytest.fixture(scope="module")
def browser():
    sync_api = _playwright()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(site) -> Iterator[str]:
    """The built site on a local http.server, 127.0.0.1 on a free port."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _watched_page(browser, local_prefix: str):
    """A page whose failed requests, console errors and requests leaving the site are recorded
    (and blocked)."""
    visit = Visit()
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # the search box in the header
    page = context.new_page()

    def route(r):
        if r.request.url.startswith(local_prefix) or r.request.url.startswith(("data:", "blob:", "about:")):
            r.continue_()
        else:
            visit.outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page.on("requestfailed", lambda r: visit.failed.append(f"{r.url}: {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and visit.failed.append(f"{r.url}: HTTP {r.status}"))
    page.on("console", lambda m: m.type == "error" and visit.errors.append(m.text))
    page.on("pageerror", lambda e: visit.errors.append(str(e)))
    return context, page, visit


def _search(page, query: str) -> int:
    """Type a query into the site search; the number of results it lists."""
    page.click("input.md-search__input")
    page.locator("input.md-search__input").press_sequentially(query, delay=20)  # real key events
    page.wait_for_selector(".md-search-result__item", timeout=30_000)
    return page.locator(".md-search-result__item").count()


def test_pages_and_search_over_http(browser, server):
    context, page, visit = _watched_page(browser, server)
    try:
        page.goto(f"{server}/index.html", wait_until="networkidle")
        assert "qkv" in page.title()
        page.goto(f"{server}/reference/api/masks.html", wait_until="networkidle")
        assert page.locator("[id='qkv.masks.sliding_window']").count() == 1
        assert _search(page, "sparsemax") > 0
        page.click(".md-search-result__item a >> nth=0")
        page.wait_for_load_state("networkidle")
        assert "sparsemax" in page.content().lower()
    finally:
        context.close()
    assert not visit.failed, visit.failed
    assert not visit.errors, visit.errors
    assert not visit.outside, visit.outside


def test_search_from_file_url(browser, site):
    """Opened straight from the disk, without a server, the search still works."""
    context, page, visit = _watched_page(browser, site.as_uri())
    try:
        page.goto((site / "guides" / "long-sequences.html").as_uri(), wait_until="networkidle")
        assert _search(page, "longformer") > 0
    finally:
        context.close()
    assert not visit.errors, visit.errors
    assert not visit.outside, visit.outside


def test_links_work_in_the_repository_as_on_the_site():
    """Every relative link of README.md, CONTRIBUTING.md and docs/ names a file of the repository
    (so it works on GitHub; the site maps the root files to their pages), except the reference
    pages the site generates from the code."""
    generated = {ROOT / "docs" / uri for uri in _hook().GENERATED}
    link = re.compile(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)")
    broken = []
    for page in [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in link.findall(text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path = (page.parent / target).resolve()
            if not path.exists() and path not in generated:
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
    hook = _hook()
    assert (
        hook.root_links_to_site("[t](../../CONTRIBUTING.md#how)", "guides/x.md")
        == "[t](../contributing.md#how)"
    )
    assert hook.root_links_to_site("[r](../README.md)", "x.md") == "[r](index.md)"
    assert hook.root_links_to_site("[m](../concepts/masks.md)", "guides/x.md") == "[m](../concepts/masks.md)"
