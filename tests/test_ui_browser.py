"""The web UI in a real browser (Debian's chromium driven by Playwright) against a real
``headwater serve``: a person runs, watches, toggles, builds and edits without YAML, and a
viewer is refused. Every page is screenshotted into ``HEADWATER_SHOTS`` (default
/tmp/hw-shots) and must load without a console error or a failed request.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

import headwater as hw
from tests.conftest import run_cli

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = Path(os.environ.get("HEADWATER_SHOTS", "/tmp/hw-shots"))

SHOP = """
# the shop's orders
name: shop
description: Orders for the churn model   # shown in the UI
params: {min_amount: 0}
triggers:
  - schedule: {cron: "0 2 * * *"}   # nightly
steps:
  - id: raw
    source: {type: files, path: in/*.csv, format: csv}
  - id: clean
    sql: SELECT * FROM raw WHERE amount >= {{ params.min_amount }}
  - id: checked
    validate:
      input: clean
      columns:
        id: {type: int64, nullable: false}
      on_error: quarantine
      max_error_ratio: 0.5
  - id: publish
    publish: {input: checked, dataset: shop, mode: overwrite}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium (never a browser Playwright downloads)."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("chromium is missing: run 'scripts/start-services.sh chromium'")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield launched
        launched.close()


class Watched:
    """A page whose console errors and failed requests are collected."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.problems: list[str] = []
        page.on("console", lambda m: self.problems.append(f"console: {m.text}")
                if m.type == "error" else None)
        page.on("response", lambda r: self.problems.append(f"{r.status} {r.url}")
                if r.status >= 400 else None)
        page.on("pageerror", lambda e: self.problems.append(f"error: {e}"))

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def clean(self) -> None:
        problems, self.problems = self.problems, []
        assert [] == problems


@pytest.fixture
def site(make_project: Callable[..., Path], serve: Callable[..., Any]) -> tuple[Path, str]:
    """A served project with one finished run and one dataset."""
    root = make_project({"shop": SHOP}, files={"in/a.csv": "id,amount\n1,5\n2,7\n,3\n"})
    with hw.Project(root) as project:
        assert project.run("shop").ok
    server = serve(root)
    return root, str(server.url)


def _page(browser: Any, base: str, width: int = 1280) -> Watched:
    context = browser.new_context(viewport={"width": width, "height": 800}, base_url=base)
    page = context.new_page()
    page.set_default_timeout(30_000)
    return Watched(page, base)


def test_operate_a_pipeline_in_the_browser(browser: Any, site: tuple[Path, str]) -> None:
    """Overview → pipeline → Run now → watch it succeed live → dataset → lineage; toggle
    a trigger; every page clean (no console error, no failed request)."""
    _root, base = site
    w = _page(browser, base)
    page = w.page
    page.goto("/")
    assert "Orders for the churn model" in page.inner_text("main")
    w.shot("01-overview")
    page.click("text=shop")
    page.wait_for_url(re.compile(r"/pipelines/shop$"))
    w.shot("02-pipeline")
    w.clean()

    page.fill("input[name=min_amount]", "6")
    page.click("button:has-text('Run now')")
    page.wait_for_url(re.compile(r"/runs/"))
    page.wait_for_selector("#run-status .s-succeeded", timeout=60_000)
    run_id = page.url.rsplit("/", 1)[1]
    assert {"min_amount": 6} == httpx.get(f"{base}/api/runs/{run_id}").json()["params"]
    assert "dataset shop" not in page.inner_text("main")  # the link names the version
    w.shot("03-run")
    w.clean()

    page.click("a:has-text('shop version')")
    page.wait_for_url(re.compile(r"/datasets/shop"))
    assert "Columns" in page.inner_text("main")
    w.shot("04-dataset")
    page.click("a:has-text('Lineage')")
    page.wait_for_url(re.compile(r"/lineage/shop"))
    assert page.locator("svg .node").count() >= 4
    w.shot("05-lineage")
    w.clean()

    page.goto("/pipelines/shop")
    page.click("button[role=switch]")
    page.wait_for_selector("button[role=switch][aria-checked=false]")
    assert [False] == [t["enabled"] for t in httpx.get(f"{base}/api/triggers").json()]
    page.goto("/runs")
    w.shot("06-runs")
    w.clean()
    phone = _page(browser, base, width=390)
    for path, name in (("/", "07-phone-overview"), (f"/runs/{run_id}", "08-phone-run")):
        phone.page.goto(path)
        phone.shot(name)
    phone.clean()


def test_build_and_edit_a_pipeline_without_yaml(browser: Any, site: tuple[Path, str]) -> None:
    """The form writes a pipeline ``check`` accepts; a bad cron is shown at its field; an
    edit keeps the file's comments."""
    root, base = site
    w = _page(browser, base)
    page = w.page
    page.goto("/pipelines/new")
    page.fill("input[name=name]", "copy")
    page.fill("input[name=description]", "A copy of the shop orders")
    page.fill("input[name=path]", "in/*.csv")
    page.click("#preview-source")
    page.wait_for_selector("#source-preview table")
    assert "1 file(s): in/a.csv" in page.inner_text("#source-preview")
    assert "amount" == page.text_content("#source-preview th >> nth=1")
    page.fill("textarea[name=sql]", "SELECT * FROM raw WHERE id IS NOT NULL")
    page.fill("input[name=dataset]", "copy")
    page.fill("input[name=cron]", "every night")
    page.click("#show-yaml")
    error = page.wait_for_selector("[data-for=schedule]:not([hidden])")
    assert "cron" in error.inner_text().lower() or "invalid" in error.inner_text().lower()
    w.shot("09-builder-error")
    assert not (root / "pipelines/copy.yaml").exists()
    w.problems = [p for p in w.problems if not p.startswith(("422 ", "console: Failed"))]
    page.fill("input[name=cron]", "0 3 * * *")
    page.click("#show-yaml")
    page.wait_for_selector("#yaml-out:not([hidden])")
    assert "cron: 0 3 * * *" in page.inner_text("#yaml-text")
    w.shot("10-builder-yaml")
    page.click("#save")
    page.wait_for_url(re.compile(r"/pipelines/copy$"))
    w.shot("11-created")
    w.clean()
    with hw.Project(root) as project:
        assert [] == project.check()
        assert "copy" in project.pipelines()

    page.goto("/pipelines/shop/edit")
    # a locator assertion, not wait_for_function: the page's CSP forbids eval()
    expect(page.locator("input[name=path]")).not_to_have_value("")
    page.fill("input[name=description]", "Orders, edited in the browser")
    page.click("#show-yaml")
    page.wait_for_selector("#diff-wrap:not([hidden])")
    assert "+description: Orders, edited in the browser" in page.inner_text("#yaml-diff")
    w.shot("12-edit-diff")
    page.click("#save")
    page.wait_for_url(re.compile(r"/pipelines/shop$"))
    w.clean()
    text = (root / "pipelines/shop.yaml").read_text()
    assert "# the shop's orders" in text and "# nightly" in text and "# shown in the UI" in text
    expected = SHOP.lstrip("\n").replace("Orders for the churn model",
                                         "Orders, edited in the browser")
    # ruamel keeps an end-of-line comment at its column; a longer value pushes it right
    assert re.sub(r" +#", " #", expected) == re.sub(r" +#", " #", text)


def test_viewer_logs_in_and_is_refused_a_rerun(browser: Any, site: tuple[Path, str]) -> None:
    """With a token in the store the UI asks to log in; a viewer reads but cannot rerun."""
    root, base = site
    made = run_cli("token", "create", "--role", "viewer", "--project", str(root))
    assert 0 == made.returncode, made.stderr
    token = made.stdout.strip()
    w = _page(browser, base)
    page = w.page
    page.goto("/")
    page.wait_for_url(re.compile(r"/login"))
    w.problems.clear()  # the redirect itself
    w.shot("13-login")
    page.fill("#token", "wrong")
    page.click("button:has-text('Log in')")
    assert "not valid" in page.inner_text("main")
    w.problems.clear()  # the refused log-in answers 401, as it should
    page.fill("#token", token)
    page.click("button:has-text('Log in')")
    page.wait_for_url(re.compile(r"/$"))
    assert "viewer" in page.inner_text("header")
    run_id = httpx.get(f"{base}/api/runs", headers={"Authorization": f"Bearer {token}"}
                       ).json()[0]["id"]
    page.goto(f"/runs/{run_id}")
    assert 0 == page.locator("button:has-text('Rerun')").count()
    w.shot("14-viewer-run")
    w.clean()
    status = page.evaluate("""async (id) => {
        const csrf = document.querySelector('meta[name="hw-csrf"]').content;
        const r = await fetch('/api/runs/' + id + '/rerun', {method: 'POST',
                              headers: {'X-Headwater-CSRF': csrf}});
        return r.status; }""", run_id)
    assert 403 == status
