"""The auditor's console (``services.console``) over the use cases on the in-memory
adapters, through aiohttp's test client: logging in with a token, what a number's
page shows, the packet downloads, brands enforced, everything escaped. The same
pages in a real browser on the real Kafka and PostgreSQL: tests/e2e/test_console_browser.py."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ledger.commands import RecordOptOut
from ledger.events import RevocationChannel
from services.adapters.digest_replica import CampaignHistoryCache
from services.adapters.memory_access import InMemoryAccessLog
from services.console import Console
from services.console.sessions import LOGIN_COOKIE, SESSION_COOKIE, Cookies
from services.grpc_api.auth import TokenAuthenticator, token_digest
from services.settings import Settings, SettingsError
from services.usecases import UseCases
from tests.builders import BRAND, PHONE, at, flagged
from tests.unit.usecase_harness import NOW, App, define, ledger_at_now, opt_in, running

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKENS = {
    "acme-auditor": ("acme-audit-secret", ["audit"], ["acme"]),
    "acme-checker": ("acme-check-secret", ["check"], ["acme"]),
    "operator": ("operator-secret", ["audit", "check"], "*"),
}


def authenticator() -> TokenAuthenticator:
    return TokenAuthenticator.from_data(
        {
            "tokens": [
                {"name": n, "sha256": token_digest(t), "scopes": s, "brands": b}
                for n, (t, s, b) in TOKENS.items()
            ]
        }
    )


@asynccontextmanager
async def console(
    auth: TokenAuthenticator | None = None, *, secure: bool = False
) -> AsyncIterator[tuple[TestClient, App, TokenAuthenticator, UseCases]]:
    auth = auth or authenticator()
    # Recorded at the app's now, so that what CanSend answered then is known now.
    async with running(ledger=ledger_at_now()) as (app, _):
        # The console's own, as the service builds them, on the app's ledger and view.
        usecases = UseCases.build(
            app.ledger,
            app.view,
            app.guard,
            clock=lambda: NOW,
            campaigns=CampaignHistoryCache(app.view),
        )
        client = TestClient(TestServer(Console(usecases, auth, secure=secure).app()))
        await client.start_server()
        try:
            yield client, app, auth, usecases
        finally:
            await client.close()


async def log_in(client: TestClient, token: str, **headers: str):  # type: ignore[no-untyped-def]
    form = await client.get("/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', await form.text())
    assert nonce is not None
    return await client.post(
        "/login",
        data={"nonce": nonce.group(1), "token": token},
        allow_redirects=False,
        headers=headers,
    )


async def test_a_good_token_logs_in_with_a_strict_http_only_cookie():
    async with console() as (client, _, _, _):
        answer = await log_in(client, "acme-audit-secret")
        assert answer.status == 303 and answer.headers["Location"] == "/"
        cookie = answer.cookies[SESSION_COOKIE]
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Strict"
        assert not cookie["secure"]  # plaintext here; over TLS it is Secure
        assert "acme-audit-secret" not in cookie.value  # the digest's signature, not the token
        home = await client.get("/")
        assert home.status == 200
        assert "acme-auditor" in await home.text()
        assert home.headers["Referrer-Policy"] == "same-origin"
        assert "default-src 'none'" in home.headers["Content-Security-Policy"]


async def test_a_bad_token_and_a_token_without_the_audit_scope_are_refused():
    async with console() as (client, _, _, usecases):
        unknown = await log_in(client, "not-a-token")
        assert unknown.status == 401
        assert "Unknown token" in await unknown.text()
        assert SESSION_COOKIE not in unknown.cookies
        checker = await log_in(client, "acme-check-secret")
        assert checker.status == 403
        assert "lacks the audit scope" in await checker.text()
        # The known token's attempt is on record; the unknown one's, with no one to
        # name, is not.
        log = usecases.access.log
        assert isinstance(log, InMemoryAccessLog)
        assert [(r.subject, r.action, r.outcome, r.refusal_code) for r in log.records] == [
            ("acme-checker", "POST /login", "refused", "PERMISSION_DENIED")
        ]
        page = await client.get("/number", params={"phone": PHONE}, allow_redirects=False)
        assert page.status == 303 and page.headers["Location"] == "/login"


async def test_a_login_from_another_site_is_refused():
    async with console() as (client, _, _, _):
        for origin in ("https://evil.example", "null"):
            foreign = await log_in(client, "acme-audit-secret", Origin=origin)
            assert foreign.status == 403
        client.session.cookie_jar.clear()  # no nonce cookie: a form posted from elsewhere
        bare = await client.post(
            "/login", data={"nonce": "x", "token": "acme-audit-secret"}, allow_redirects=False
        )
        assert bare.status == 400
        assert SESSION_COOKIE not in bare.cookies


async def test_a_forged_session_or_a_token_taken_out_of_the_file_logs_out():
    async with console() as (client, _, auth, _):
        await log_in(client, "acme-audit-secret")
        assert (await client.get("/", allow_redirects=False)).status == 200
        forged, _ = Cookies().session(token_digest("operator-secret"))  # another key
        client.session.cookie_jar.clear()
        client.session.cookie_jar.update_cookies({SESSION_COOKIE: forged}, client.make_url("/"))
        assert (await client.get("/", allow_redirects=False)).status == 303
        await log_in(client, "acme-audit-secret")
        assert (await client.get("/", allow_redirects=False)).status == 200
        auth.take(TokenAuthenticator.from_data({"tokens": []}))
        assert (await client.get("/", allow_redirects=False)).status == 303


async def test_the_number_page_shows_consent_the_timeline_and_can_send_now_and_then():
    async with console() as (client, app, _, _):
        await app.writes.record(define())
        await app.writes.record(opt_in("r1"))
        stop = RecordOptOut("r2", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(30), "Stop")
        written = await app.writes.record(stop)
        assert await app.guard.wait_for_token(written.token)
        await log_in(client, "acme-audit-secret")
        before_stop = (at(20)).strftime("%Y-%m-%dT%H:%M")
        # Known now: every fact here was recorded at NOW, after the moment asked about,
        # and without known_at those count against it, never for it.
        known = NOW.strftime("%Y-%m-%dT%H:%M")
        asked = {"phone": "+1 (415) 555-2671", "at": before_stop, "known_at": known}
        page = await client.get("/number", params=asked)
        assert page.status == 200
        html = await page.text()
        assert f'id="number">{PHONE}<' in html
        assert 'data-state="revoked"' in html
        now = re.search(r'id="now-acme-promo"[^>]*data-allowed="(\w+)" data-reason="(\w+)"', html)
        assert now is not None and now.groups() == ("false", "revoked")
        then = re.search(r'id="then-acme-promo"[^>]*data-allowed="(\w+)" data-reason="(\w+)"', html)
        assert then is not None and then.groups() == ("true", "consent_active")
        # The packet's own picture: a grant, then a STOP.
        assert '<g class="point grant">' in html and '<g class="point stop">' in html


async def test_the_packet_downloads_as_json_html_and_pdf():
    async with console() as (client, app, _, _):
        await app.writes.record(define())
        written = await app.writes.record(opt_in("r1"))
        assert await app.guard.wait_for_token(written.token)
        await log_in(client, "acme-audit-secret")
        query = {"phone": PHONE, "brand": BRAND, "campaign": "promo"}
        as_json = await client.get("/packet", params={**query, "format": "json"})
        assert as_json.status == 200
        assert as_json.headers["Content-Disposition"] == (
            'attachment; filename="proof-14155552671-acme-promo.json"'
        )
        document = json.loads(await as_json.read())
        assert document["phone"] == PHONE and len(document["opt_ins"]) == 1
        as_pdf = await client.get("/packet", params={**query, "format": "pdf"})
        assert as_pdf.headers["Content-Type"] == "application/pdf"
        assert (await as_pdf.read()).startswith(b"%PDF-")
        as_html = await client.get("/packet", params={**query, "format": "html"})
        assert "Proof of opt-in" in await as_html.text()
        bad = await client.get("/packet", params={**query, "format": "docx"})
        assert bad.status == 400 and "format" in await bad.text()


async def test_another_brands_number_is_refused_and_its_facts_never_shown():
    async with console() as (client, app, _, _):
        await app.writes.record(define())
        await app.writes.record(replace(define("define-globex"), brand="globex"))
        globex = opt_in("g1")
        written = await app.writes.record(replace(globex, brand="globex"))
        assert await app.guard.wait_for_token(written.token)
        await log_in(client, "acme-audit-secret")
        refused = await client.get("/number", params={"phone": PHONE, "brand": "globex"})
        assert refused.status == 403
        assert "may not act for brand &#39;globex&#39;" in await refused.text()
        packet = await client.get("/packet", params={"phone": PHONE, "brand": "globex"})
        assert packet.status == 403
        review = await client.get("/review", params={"brand": "globex"})
        assert review.status == 403
        own = await (await client.get("/number", params={"phone": PHONE})).text()
        assert 'data-brand="acme"' in own and "globex" not in own.split("<main>")[1]


async def test_bad_input_is_a_page_naming_the_field():
    async with console() as (client, _, _, _):
        await log_in(client, "operator-secret")
        phone = await client.get("/number", params={"phone": "call me"})
        assert phone.status == 400
        assert "phone" in await phone.text() and "E.164" in await phone.text()
        brand = await client.get("/number", params={"phone": PHONE, "brand": "<b>x</b>"})
        assert brand.status == 400
        text = await brand.text()
        assert "<b>x</b>" not in text
        moment = await client.get("/number", params={"phone": PHONE, "at": "yesterday"})
        assert moment.status == 400 and "at" in await moment.text()


async def test_replies_awaiting_review_are_listed_and_escaped():
    async with console() as (client, app, _, _):
        await app.writes.record(define())
        await app.writes.record(opt_in("r1"))
        hostile = '<script>alert("x")</script> please stop'
        [reply] = await app.ledger.append([flagged(at(10), hostile, phone=PHONE, brand=BRAND)])
        assert reply is not None
        await log_in(client, "acme-audit-secret")
        review = await client.get("/review")
        text = await review.text()
        assert review.status == 200
        assert "<script>" not in text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; please stop" in text
        assert PHONE in text
        page = await client.get("/number", params={"phone": PHONE, "brand": BRAND})
        html = await page.text()
        assert 'data-state="pending_review"' in html
        assert "<script>" not in html and "&lt;script&gt;" in html
        assert NOW - at(10) < timedelta(days=14)


async def test_logging_out_needs_the_sessions_nonce():
    async with console() as (client, _, _, _):
        await log_in(client, "acme-audit-secret")
        refused = await client.post("/logout", data={"nonce": "guess"}, allow_redirects=False)
        assert refused.status == 403
        home = await (await client.get("/")).text()
        nonce = re.search(r'name="nonce" value="([^"]+)"', home)
        assert nonce is not None
        out = await client.post("/logout", data={"nonce": nonce.group(1)}, allow_redirects=False)
        assert out.status == 303
        assert (await client.get("/", allow_redirects=False)).status == 303


async def test_over_tls_the_session_cookie_is_secure():
    async with console(secure=True) as (client, _, _, _):
        form = await client.get("/login")
        login = form.cookies[LOGIN_COOKIE]
        assert login["secure"] is True
        nonce = re.search(r'name="nonce" value="([^"]+)"', await form.text())
        assert nonce is not None
        # The test client speaks plain HTTP, where the jar keeps Secure cookies back.
        answer = await client.post(
            "/login",
            data={"nonce": nonce.group(1), "token": "acme-audit-secret"},
            headers={"Cookie": f"{LOGIN_COOKIE}={login.value}"},
            allow_redirects=False,
        )
        assert answer.status == 303
        assert answer.cookies[SESSION_COOKIE]["secure"] is True


async def test_the_console_is_off_unless_its_address_is_set():
    env = {"CONSENT_POSTGRES_DSN": "postgresql://db/x", "CONSENT_AUTH_TOKENS_FILE": "t.json"}
    assert Settings.from_env(env, embedded=True).console_listen == ""
    on = Settings.from_env({**env, "CONSENT_CONSOLE_LISTEN": "127.0.0.1:8080"}, embedded=True)
    assert on.console_listen == "127.0.0.1:8080"
    with pytest.raises(SettingsError, match="CONSENT_CONSOLE_LISTEN"):
        Settings.from_env({**env, "CONSENT_CONSOLE_LISTEN": "8080"}, embedded=True)


async def test_the_consoles_reads_are_recorded_under_the_auditors_name():
    async with console() as (client, app, _, usecases):
        await app.writes.record(define())
        written = await app.writes.record(opt_in("r1"))
        assert await app.guard.wait_for_token(written.token)
        await log_in(client, "acme-audit-secret")
        query = {"phone": PHONE, "brand": BRAND}
        assert (
            await client.get("/number", params={**query, "at": "2026-03-02T18:30"})
        ).status == 200
        assert (await client.get("/packet", params={**query, "format": "pdf"})).status == 200
        assert (await client.get("/number", params={**query, "brand": "globex"})).status == 403
        log = usecases.access.log
        assert isinstance(log, InMemoryAccessLog)
        records = [r for r in log.records if r.outcome == "admitted"]
        assert {(r.subject, r.via, r.brand, r.phone) for r in records} == {
            ("acme-auditor", "console", BRAND, PHONE)
        }
        # The other brand's page: refused, and on record as such.
        [refused] = [r for r in log.records if r.outcome == "refused"]
        assert (refused.action, refused.brand, refused.refusal_code) == (
            "GET /number",
            "globex",
            "PERMISSION_DENIED",
        )
        actions = [r.action for r in records]
        assert {"ListEvents", "GetConsent", "CanSendAsOf", "GetProofPacket"} <= set(actions)
        assert [r.detail.get("format") for r in records if r.action == "GetProofPacket"][
            -1
        ] == "pdf"
        # One request id per page, on each of its reads.
        assert len({r.request_id for r in records}) == 2
        assert all(r.request_id.startswith("console-") for r in records)
