"""The auditor's console: a small read-only web console, served by ``aiohttp`` on
the service's own event loop and port of its own (``CONSENT_CONSOLE_LISTEN``).

An auditor logs in with a token of the tokens file that has the ``audit`` scope;
every page reads through the use cases (``services.usecases``), as the gRPC audit
calls do, for the brands the token may act for. Pages are rendered on the server
from jinja2 templates with every value escaped; the only requests that are not
GETs are the login and the logout, each guarded by a nonce.

Nothing here writes to the ledger. Phone numbers travel in query strings (GET
only), so the access log writes paths alone and pages send no referrer.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ledger.commands import check_name
from ledger.deadlines import revocation_due
from ledger.errors import DomainError, InvalidRequest
from ledger.events import ANY_BRAND, RevocationCandidateFlagged
from ledger.phone import to_e164
from ledger.policy import Reason, deny
from ledger.state import Fact
from services import packets
from services.console.sessions import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Cookies,
    Session,
)
from services.errors import (
    AccessNotRecorded,
    FailedPrecondition,
    NotConsistent,
    PermissionDenied,
    ServiceError,
    StoreUnavailable,
)
from services.grpc_api.auth import Principal, Scope, TokenAuthenticator, token_digest
from services.log_context import REQUEST_ID
from services.packets import timeline
from services.usecases import UseCases
from services.usecases.access import ADMITTED, Reader
from services.usecases.audit import Consent
from services.usecases.checks import CheckResult

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    # Inline styles only (the packet's picture colours its legend inline); no script,
    # no frames, forms posted to this site alone.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Query strings hold phone numbers: no other site is told them. (``no-referrer``
    # would make the browser send ``Origin: null`` with the login form, which a
    # sandboxed frame of any site can send too.)
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
REVIEW_LIMIT = 200
"""Flagged replies a review page lists at most, per brand."""
AT_FORMAT = "YYYY-MM-DDTHH:MM, UTC"


@cache
def _templates() -> jinja2.Environment:
    # The packet's templates too: the console draws the packet's own timeline.
    loader = jinja2.ChoiceLoader(
        [
            jinja2.PackageLoader("services.console", "templates"),
            jinja2.PackageLoader("services.packets", "templates"),
        ]
    )
    return jinja2.Environment(
        loader=loader,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


class _PathOnlyAccessLog(AbstractAccessLogger):
    """The access log without query strings, which hold phone numbers."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "console %s %s %d %.3fs", request.method, request.path, response.status, time
        )


@dataclass(frozen=True)
class CampaignView:
    """What the number page shows of one campaign of a brand."""

    name: str
    consent: Consent | None
    """None when the campaign is not defined (``missing`` says so)."""
    now: CheckResult
    then: CheckResult | None
    picture: timeline.Layout
    pending: list[dict[str, Any]]
    missing: str = ""


@dataclass(frozen=True)
class BrandView:
    brand: str
    campaigns: list[CampaignView]
    picture: timeline.Layout | None
    """The whole brand's timeline, when no fact names a campaign."""
    events: int


@dataclass
class Console:
    usecases: UseCases
    auth: TokenAuthenticator
    secure: bool = False
    """Served over TLS: cookies are ``Secure``."""
    cookies: Cookies = field(default_factory=Cookies)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._request_id, self._headers, self._errors])
        app.add_routes(
            [
                web.get("/", self.home),
                web.get("/login", self.login_form),
                web.post("/login", self.login),
                web.post("/logout", self.logout),
                web.get("/number", self.number),
                web.get("/packet", self.packet),
                web.get("/review", self.review),
            ]
        )
        return app

    # ---- pages ------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.Response:
        principal, session = self._who(request)
        return self._page("home.html.j2", principal, session)

    async def login_form(
        self, request: web.Request, error: str = "", status: int = 200
    ) -> web.Response:
        nonce, cookie = self.cookies.login_nonce()
        response = self._render("login.html.j2", status=status, nonce=nonce, error=error)
        self._set_cookie(response, LOGIN_COOKIE, cookie, None)
        return response

    async def login(self, request: web.Request) -> web.Response:
        if not self._same_origin(request):
            raise Refused(403, "This form was sent from another site.")
        form = await request.post()
        nonce = form.get("nonce")
        if not isinstance(nonce, str) or not self.cookies.login_nonce_matches(
            request.cookies.get(LOGIN_COOKIE), nonce
        ):
            return await self.login_form(
                request, "The login form expired or was not this site's; log in again.", 400
            )
        token = form.get("token")
        token = token.strip() if isinstance(token, str) else ""
        principal = self.auth.by_digest(token_digest(token)) if token else None
        if principal is None:
            return await self.login_form(request, "Unknown token.", 401)
        if Scope.AUDIT not in principal.scopes:
            told = f"{principal.name} lacks the audit scope the console needs."
            # A known token turned away is an attempt on record, as the API's are.
            await self.usecases.access.refused(
                principal.name,
                "console",
                REQUEST_ID.get() or "-",
                "POST /login",
                "PERMISSION_DENIED",
                f"authorization: {told}",
                brand=None,
            )
            return await self.login_form(request, told, 403)
        cookie, _ = self.cookies.session(token_digest(token))
        response = web.HTTPSeeOther("/")
        self._set_cookie(response, SESSION_COOKIE, cookie, SESSION_SECONDS)
        response.del_cookie(LOGIN_COOKIE, path="/")
        log.info("console: %s logged in", principal.name)
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        _, session = self._who(request)
        form = await request.post()
        if not self._same_origin(request) or form.get("nonce") != session.nonce:
            raise Refused(403, "This form was sent from another site.")
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    async def number(self, request: web.Request) -> web.Response:
        principal, session = self._who(request)
        reader = self._reader(principal)
        q = request.query
        phone = to_e164(q.get("phone", ""), field="phone")
        asked_brand = q.get("brand", "").strip() or None
        asked_campaign = q.get("campaign", "").strip() or None
        if asked_campaign is not None:
            check_name(asked_campaign, "campaign")
        at = _moment(q.get("at", ""), "at")
        known_at = _moment(q.get("known_at", ""), "known_at")
        if asked_brand is not None:
            check_name(asked_brand, "brand")
            principal.require(Scope.AUDIT, asked_brand)
            brands = [asked_brand]
        elif principal.brands is not None:
            brands = sorted(principal.brands)
        else:  # every brand: those the number has facts for
            everything = await self.usecases.audit.history(phone, None, reader=reader)
            found = {getattr(r.event, "brand", None) for r in everything.value}
            brands = sorted(b for b in found if isinstance(b, str) and b != ANY_BRAND)
        views = [
            await self._brand(reader, phone, brand, asked_campaign, at, known_at)
            for brand in brands
        ]
        return self._page(
            "number.html.j2",
            principal,
            session,
            phone=phone,
            brands=views,
            asked_brand=asked_brand or "",
            asked_campaign=asked_campaign or "",
            at=q.get("at", ""),
            known_at=q.get("known_at", ""),
            link=lambda **kw: _link(phone, **kw),
        )

    async def packet(self, request: web.Request) -> web.Response:
        principal, _ = self._who(request)
        q = request.query
        phone = to_e164(q.get("phone", ""), field="phone")
        brand = q.get("brand", "")
        check_name(brand, "brand")
        principal.require(Scope.AUDIT, brand)
        campaign = q.get("campaign", "").strip() or None
        if campaign is not None:
            check_name(campaign, "campaign")
        try:
            fmt = packets.Format(q.get("format", "html"))
        except ValueError:
            raise InvalidRequest("format", "must be json, html or pdf") from None
        read = await self.usecases.audit.proof_packet(
            phone, brand, campaign, reader=self._reader(principal), document=fmt.value
        )
        document = packets.to_document(read.value, consistency_token=read.token.encode())
        # A PDF takes a moment to draw: off the event loop, which serves the API too.
        body = await asyncio.to_thread(packets.render, document, fmt)
        name = "-".join(["proof", phone.lstrip("+"), brand, *([campaign] if campaign else [])])
        return web.Response(
            body=body,
            headers={
                "Content-Type": fmt.content_type,
                "Content-Disposition": f'attachment; filename="{name}.{fmt.value}"',
            },
        )

    async def review(self, request: web.Request) -> web.Response:
        principal, session = self._who(request)
        asked = request.query.get("brand", "").strip()
        if asked:
            check_name(asked, "brand")
            principal.require(Scope.AUDIT, asked)
            brands = [asked]
        else:
            brands = sorted(principal.brands) if principal.brands is not None else []
        queues = []
        reader = self._reader(principal)
        for brand in brands:
            page = await self.usecases.review.revocation_candidates(
                brand, limit=REVIEW_LIMIT, reader=reader
            )
            queues.append((brand, [_candidate(q.candidate, page.now) for q in page.candidates]))
        return self._page(
            "review.html.j2",
            principal,
            session,
            queues=queues,
            asked=asked,
            limit=REVIEW_LIMIT,
            link=lambda phone, brand: _link(phone, brand=brand),
        )

    # ---- what a number page reads ---------------------------------------------

    async def _brand(
        self,
        reader: Reader,
        phone: str,
        brand: str,
        asked_campaign: str | None,
        at: datetime | None,
        known_at: datetime | None,
    ) -> BrandView:
        history = await self.usecases.audit.history(phone, brand, reader=reader)
        named = {
            c for r in history.value if isinstance(c := getattr(r.event, "campaign", None), str)
        }
        if asked_campaign is not None:
            named = {asked_campaign}
        campaigns = [
            await self._campaign(reader, phone, brand, name, at, known_at) for name in sorted(named)
        ]
        picture = None
        if not campaigns:
            picture = await self._picture(reader, phone, brand, None)
        return BrandView(brand, campaigns, picture, len(history.value))

    async def _campaign(
        self,
        reader: Reader,
        phone: str,
        brand: str,
        campaign: str,
        at: datetime | None,
        known_at: datetime | None,
    ) -> CampaignView:
        checks = self.usecases.checks
        now = await _fail_closed(checks.can_send(phone, brand, campaign))
        then = None
        if at is not None:
            then = await checks.can_send_as_of(phone, brand, campaign, at, known_at, reader=reader)
        try:
            # Also the read that records the page's CanSend answer (CanSend is no audit
            # read of its own).
            consent = await self.usecases.audit.get_consent(phone, brand, campaign, reader=reader)
        except FailedPrecondition as exc:  # a campaign named by a fact but never defined
            empty = timeline.layout([])
            return CampaignView(campaign, None, now, then, empty, [], exc.reason)
        picture = await self._picture(reader, phone, brand, campaign)
        pending = [_candidate(c, consent.now) for c in consent.pending]
        return CampaignView(campaign, consent, now, then, picture, pending)

    async def _picture(
        self, reader: Reader, phone: str, brand: str, campaign: str | None
    ) -> timeline.Layout:
        read = await self.usecases.audit.proof_packet(phone, brand, campaign, reader=reader)
        document = packets.to_document(read.value)
        return timeline.layout(document["timeline"])

    # ---- who is asking --------------------------------------------------------

    def _who(self, request: web.Request) -> tuple[Principal, Session]:
        """The logged-in auditor, or a redirect to the login page: no session, a
        forged or expired one, or a token no longer in the tokens file."""
        session = self.cookies.read_session(request.cookies.get(SESSION_COOKIE))
        principal = None if session is None else self.auth.by_digest(session.digest)
        if principal is None or session is None:
            raise web.HTTPSeeOther("/login")
        principal.require(Scope.AUDIT)
        return principal, session

    @staticmethod
    def _reader(principal: Principal) -> Reader:
        """The auditor as the use cases record its reads: under this page's request id."""
        return principal.reader(REQUEST_ID.get() or "-", via="console")

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        """A POST's ``Origin``, when the browser sends one, is this site's."""
        origin = request.headers.get("Origin")
        return origin is None or origin == f"{request.scheme}://{request.host}"

    def _set_cookie(
        self, response: web.StreamResponse, name: str, value: str, max_age: int | None
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.secure,
        )

    # ---- rendering and errors ---------------------------------------------------

    def _page(
        self, template: str, principal: Principal, session: Session, **values: Any
    ) -> web.Response:
        brands = None if principal.brands is None else sorted(principal.brands)
        return self._render(
            template, who=principal.name, who_brands=brands, nonce=session.nonce, **values
        )

    @staticmethod
    def _render(template: str, status: int = 200, **values: Any) -> web.Response:
        values.setdefault("who", None)
        values.setdefault("AT_FORMAT", AT_FORMAT)
        values.setdefault("width", timeline.WIDTH)
        html = _templates().get_template(template).render(**values)
        return web.Response(text=html, status=status, content_type="text/html")

    @web.middleware
    async def _request_id(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A request id of each page's own, on its log lines and its access records."""
        token = REQUEST_ID.set(f"console-{uuid.uuid4()}")
        try:
            return await handler(request)
        finally:
            REQUEST_ID.reset(token)

    @web.middleware
    async def _headers(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(SECURITY_HEADERS)
            raise
        response.headers.update(SECURITY_HEADERS)
        return response

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Every refusal as a page that says why, with the field it is about; a page
        refused before any of its reads was admitted is recorded as a refused audit
        call, as the gRPC API records its own (``services.usecases.access``)."""
        ADMITTED.set(False)
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Refused as exc:
            return self._error(exc.status, "Refused", [("request", exc.reason)])
        except DomainError as exc:
            told = "; ".join(f"{f}: {r}" for f, r in exc.violations)
            await self._refused(request, "INVALID_ARGUMENT", told)
            return self._error(400, "Bad input", list(exc.violations))
        except PermissionDenied as exc:
            await self._refused(request, "PERMISSION_DENIED", f"{exc.field}: {exc.reason}")
            return self._error(403, "Not allowed", [(exc.field, exc.reason)])
        except FailedPrecondition as exc:
            return self._error(404, "Not found", [(exc.field, exc.reason)])
        except (NotConsistent, AccessNotRecorded, StoreUnavailable) as exc:
            reason = exc.reason if isinstance(exc, ServiceError) else str(exc)
            field_name = exc.field if isinstance(exc, ServiceError) else "store"
            return self._error(503, "Try again", [(field_name, reason)])
        except ServiceError as exc:
            return self._error(400, "Refused", [(exc.field, exc.reason)])
        except Exception:
            log.exception("console: %s %s failed", request.method, request.path)
            return self._error(500, "Failed", [("request", "the console could not answer")])

    async def _refused(self, request: web.Request, code: str, told: str) -> None:
        """Record the page ``request`` asked for, refused with ``code``, unless one of
        its reads was admitted (and so recorded) first, or no one is logged in."""
        if ADMITTED.get():
            return
        try:
            principal, _ = self._who(request)
        except web.HTTPException:
            return
        q = request.query
        await self.usecases.access.refused(
            principal.name,
            "console",
            REQUEST_ID.get() or "-",
            f"{request.method} {request.path}",
            code,
            told,
            brand=q.get("brand"),
            phone=q.get("phone"),
            campaign=q.get("campaign"),
        )

    def _error(self, status: int, title: str, problems: list[tuple[str, str]]) -> web.Response:
        return self._render("error.html.j2", status=status, title=title, problems=problems)


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


async def _fail_closed(answer: Awaitable[CheckResult]) -> CheckResult:
    """CanSend's answer, or "not allowed" when it cannot be had (as the API answers)."""
    try:
        return await answer
    except DomainError:
        raise
    except Exception:
        log.exception("console: CanSend failed; shown as not allowed")
        return CheckResult.failed(deny(Reason.INTERNAL_ERROR, "the service could not answer"))


def _moment(text: str, name: str) -> datetime | None:
    """A moment typed in a form (``datetime-local``), read as UTC; None when empty."""
    text = text.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(name, f"must be a date and time, {AT_FORMAT}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _candidate(c: Fact[RevocationCandidateFlagged], now: datetime) -> dict[str, Any]:
    due = revocation_due(c.at)
    return {
        "event_id": c.event_id,
        "phone": c.event.phone,
        "brand": c.event.brand,
        "at": c.at,
        "text": c.event.text,
        "due": due,
        "overdue": due <= now,
    }


def _link(phone: str, **query: str | None) -> str:
    """A console URL with the phone and the non-empty ``query`` values, encoded."""
    path = query.pop("path", None) or "/number"
    values = {"phone": phone, **{k: v for k, v in query.items() if v}}
    return f"{path}?{urlencode(values)}"


class ConsoleServer:
    """The console on its own port, on the running event loop."""

    def __init__(self, console: Console, host: str, port: int, ssl: Any = None) -> None:
        self.console, self.host, self.port, self.ssl = console, host, port, ssl
        self._runner: web.AppRunner | None = None
        self.address = ""

    async def start(self) -> None:
        runner = web.AppRunner(self.console.app(), access_log_class=_PathOnlyAccessLog)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]  # the bound port, when 0 asked for any
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.address = f"{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
