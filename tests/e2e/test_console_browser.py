"""The auditor's console in a real browser: Debian's Chromium, headless, driven by
selenium through Debian's chromedriver, against a real service on the real Kafka
ledger and PostgreSQL. An auditor is refused a bad token, logs in, looks a number
up by typing it, reads its consent, timeline and CanSend answers now and before
the STOP, downloads the packet, and is refused another brand's number.

The browser must start: `make test` installs it (scripts/ensure_chromium.sh), and
when it cannot start the test fails, saying why; it is never skipped."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pypdf
import pytest

from ledger.ports import AccessQuery, ConsistencyToken
from tests.e2e.harness import (
    TOKENS,
    Clock,
    client,
    define,
    opt_in,
    opt_out,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PHONE = "+14155552793"
GLOBEX_PHONE = "+14155552794"
WAIT_S = 60
"""How long a page or a download may take on a loaded machine (a bound, not a goal)."""


def start_browser(downloads: Path, profile: Path) -> Any:
    """Headless Chromium, downloading into ``downloads``; ``pytest.fail`` naming what
    is missing when it cannot start."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:  # pragma: no cover - the lock installs it
        pytest.fail(f"selenium is not installed ({exc}): run `make venv`")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(path) is None:
            pytest.fail(
                f"{path} is missing: install Debian's {package} "
                "(`make chromium`, which `make test` runs, does it with apt-get)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Root in CI: no sandbox. This machine's network is closed: no background calls.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,2000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "plugins.always_open_pdf_externally": True,
        },
    )
    try:
        # The Debian chromedriver by path: selenium's own manager would download one.
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    except Exception as exc:
        pytest.fail(f"Chromium did not start ({CHROMIUM} through {CHROMEDRIVER}): {exc}")
    driver.set_page_load_timeout(WAIT_S)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    return driver


def downloaded(downloads: Path, suffix: str) -> Path:
    """The file with ``suffix`` once Chromium has finished writing it."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        done = [p for p in downloads.glob(f"*{suffix}") if not p.name.endswith(".crdownload")]
        if done and not list(downloads.glob("*.crdownload")):
            return done[0]
        time.sleep(0.2)
    found = sorted(p.name for p in downloads.iterdir())
    raise AssertionError(f"no {suffix} was downloaded into {downloads}: {found}")


def audit_in_browser(base: str, tmp: Path, before_stop: str) -> dict[str, Any]:
    """What an auditor sees, step by step (blocking: run in a thread, while the
    service serves on the test's event loop)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    downloads = tmp / "downloads"
    downloads.mkdir()
    driver = start_browser(downloads, tmp / "profile")
    seen: dict[str, Any] = {}
    try:

        def submit(button: str) -> None:
            """Click ``button`` and wait for the page it leads to."""
            page = driver.find_element(By.TAG_NAME, "html")
            driver.find_element(By.ID, button).click()
            WebDriverWait(driver, WAIT_S).until(lambda _: left(page))

        def left(page: Any) -> bool:
            """Whether ``page`` is gone. Chrome may answer for a node of a page it is
            leaving "does not belong to the document" rather than "stale", which
            ``staleness_of`` raised as an error."""
            try:
                page.is_enabled()
            except WebDriverException:
                return True
            return False

        def log_in(token: str) -> None:
            driver.find_element(By.ID, "token").send_keys(token)
            submit("login")

        def attr(css: str, name: str) -> str:
            return str(driver.find_element(By.CSS_SELECTOR, css).get_attribute(name))

        driver.get(f"{base}/number?phone=%2B14155552793")
        seen["unauthenticated_url"] = driver.current_url
        log_in("not-a-token")
        seen["bad_token_error"] = driver.find_element(By.ID, "error").text
        log_in(TOKENS["acme-app"][0])
        seen["who"] = driver.find_element(By.ID, "who").text
        # Typed as a person would, with spaces and brackets.
        driver.find_element(By.ID, "phone").send_keys("+1 (415) 555-2793")
        submit("lookup")
        seen["number"] = driver.find_element(By.ID, "number").text
        seen["state"] = attr("#campaign-acme-promo .state", "data-state")
        seen["now"] = (
            attr("#now-acme-promo", "data-allowed"),
            attr("#now-acme-promo", "data-reason"),
        )
        seen["now_text"] = driver.find_element(By.ID, "now-acme-promo").text
        seen["points"] = [
            str(g.get_attribute("class"))
            for g in driver.find_elements(By.CSS_SELECTOR, "#campaign-acme-promo svg g.point")
        ]
        seen["brands"] = [
            str(s.get_attribute("data-brand"))
            for s in driver.find_elements(By.CSS_SELECTOR, "section.brand")
        ]
        # What CanSend answered before the STOP: a moment in the form (UTC).
        field = driver.find_element(By.ID, "at")
        driver.execute_script("arguments[0].value = arguments[1]", field, before_stop)
        submit("lookup")
        seen["then"] = (
            attr("#then-acme-promo", "data-allowed"),
            attr("#then-acme-promo", "data-reason"),
        )
        driver.save_screenshot(str(tmp / "console.png"))
        for fmt in ("pdf", "json"):
            driver.find_element(
                By.CSS_SELECTOR, f"#campaign-acme-promo a.packet[href*='format={fmt}']"
            ).click()
            seen[fmt] = downloaded(downloads, f".{fmt}").read_bytes()
        driver.get(f"{base}/number?phone=%2B14155552794&brand=globex")
        seen["other_brand_title"] = driver.find_element(By.ID, "refusal").text
        seen["other_brand_body"] = driver.find_element(By.TAG_NAME, "main").text
        driver.get(f"{base}/number?phone=%2B14155552794")
        seen["own_brands_only"] = driver.find_element(By.TAG_NAME, "main").text
    except Exception as exc:  # say what the browser showed, not only what was missing
        shown = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"{exc}\nthe browser showed {driver.current_url}:\n{shown}") from exc
    finally:
        driver.quit()
    return seen


@pytest.fixture
async def service(serve):
    # Noon in Los Angeles, so that the moment before the STOP is within its hours.
    clock = Clock()
    runtime = await serve(name="console", clock=clock, console_listen="127.0.0.1:0")
    return runtime, clock.now


async def test_an_auditor_looks_a_number_up_in_a_real_browser(service, tmp_path):
    runtime, when = service
    assert runtime.console_address is not None
    async with client(runtime.address, "admin") as admin:
        for brand in ("acme", "globex"):
            await admin.DefineCampaign(define(brand, "promo", when - timedelta(days=1)))
        await admin.RecordOptIn(opt_in(PHONE, "acme", "promo", when - timedelta(hours=3)))
        await admin.RecordOptIn(opt_in(GLOBEX_PHONE, "globex", "promo", when - timedelta(hours=3)))
        last = await admin.RecordOptOut(opt_out(PHONE, "acme", "promo", when - timedelta(hours=1)))
    # The projector may take a while to join its group on a busy machine.
    assert runtime.guard is not None
    token = ConsistencyToken.decode(last.consistency_token)
    assert await runtime.guard.wait_for_token(token, timeout=60)

    before_stop = (when - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S")
    seen = await asyncio.to_thread(
        audit_in_browser, f"http://{runtime.console_address}", tmp_path, before_stop
    )

    assert seen["unauthenticated_url"].endswith("/login")
    assert seen["bad_token_error"] == "Unknown token."
    assert seen["who"] == "acme-app"
    assert seen["number"] == PHONE
    assert seen["brands"] == ["acme"]  # the token's one brand
    assert seen["state"] == "revoked"
    assert seen["now"] == ("false", "revoked")
    assert seen["now_text"] == "NOT ALLOWED"
    assert seen["points"] == ["point grant", "point stop"]  # the packet's own picture
    assert seen["then"] == ("true", "consent_active")

    pdf = pypdf.PdfReader(io.BytesIO(seen["pdf"]))
    text = " ".join(page.extract_text() for page in pdf.pages)
    assert "Proof of opt-in" in text and PHONE in text
    packet = json.loads(seen["json"])
    assert (packet["phone"], packet["brand"], packet["campaign"]) == (PHONE, "acme", "promo")
    assert [o["campaign"] for o in packet["opt_ins"]] == ["promo"]

    assert seen["other_brand_title"] == "Not allowed"
    assert "may not act for brand 'globex'" in seen["other_brand_body"]
    # Looked up without a brand, globex's opt-in of that number is not shown.
    assert "globex" not in seen["own_brands_only"].replace("acme-app", "")
    assert "No fact about this number names a campaign of acme" in seen["own_brands_only"]
    assert (await asyncio.to_thread(lambda: (tmp_path / "console.png").stat().st_size)) > 0

    # Each read the pages made is in the service's access log, under the auditor's name.
    assert runtime.usecases is not None
    recorded = await runtime.usecases.access.log.list(
        AccessQuery(brands=frozenset({"acme"}), subject="acme-app", limit=1000)
    )
    assert {r.via for r in recorded} == {"console"}
    assert {r.phone for r in recorded} == {PHONE, GLOBEX_PHONE}
    assert {"ListEvents", "GetConsent", "CanSendAsOf", "GetProofPacket"} <= {
        r.action for r in recorded
    }
