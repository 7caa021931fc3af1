"""One opt-out, written each of the ways it reaches the service (``RecordOptOut``, an
inbound STOP, ``ImportConsents`` and ``consent-ledger import``), answers alike: for
each kind of opt-out (of one campaign, of every one, a STOPALL text, under each way
the revoke-all rule comes into force), each time it may say, and each order against
a hold, a refused attempt corrected, a retry or a live STOP, the numbers written each
way get the same ``CanSend`` / ``CanSendAsOf`` answers, the same holds in the review
queue and the same refusal of a later opt-in. The one difference the README has: an
imported opt-out owes no confirmation ("Importing from another platform"); a live
hold it resolves owes the held opt-out's, as a review's "revoked" does."""

from __future__ import annotations

import asyncio
import csv
import itertools
import re
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from tests.e2e.harness import (
    TOKENS,
    Client,
    Clock,
    client,
    define,
    held_info,
    inbound,
    noon_in_los_angeles,
    opt_in,
    opt_out,
    streamed,
    ts,
)
from tests.e2e.test_bulk_import import import_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")

PATHS = ("record", "inbound", "import", "cli")
IMPORTED = ("import", "cli")
# Each brand reads opt-outs of one campaign its own way: acme not under revoke-all,
# globex under its SetBrandPolicy, initech's alerts under the campaign's own
# revoke_all, and umbrella under the FCC's date (its rows run after that date).
SENDERS = {
    "acme": {"promo": "+12125550201", "alerts": "+12125550202"},
    "globex": {"promo": "+12125550211", "alerts": "+12125550212"},
    "initech": {"promo": "+12125550221", "alerts": "+12125550222"},
    "umbrella": {"promo": "+12125550231", "alerts": "+12125550232"},
}
REVOKE_ALL = datetime(2027, 1, 31, 5, 0, tzinfo=UTC)  # README, "Revoke-all"

# When an opt-out says it happened, from the group's now; "ahead" is refused and
# held, "skew" is placed at now (README, "No conditional appends").
WHEN = {
    "normal": timedelta(minutes=-1),
    "past": timedelta(days=-20),
    "ahead": timedelta(minutes=10),
    "skew": timedelta(minutes=2),
    "before_opt_in": timedelta(hours=-2),
}
HOLD_AT = timedelta(seconds=-40)  # a refused RecordOptOut's hold, from now


@dataclass(frozen=True)
class Row:
    brand: str
    # campaign: STOP to promo; brand: of every campaign (STOPALL inbound); stopall: the
    # text STOPALL filed under promo; own: STOP to alerts (initech's revoke_all campaign)
    kind: str
    when: str = "normal"
    # plain; hold_before / hold_after: a refused RecordOptOut's hold of the number
    # before / after it; corrected: the path's own refused attempt, then corrected
    # under its id, and corrected_opt_in: then a new opt-in to promo a minute on;
    # corrected_time: first stamped 11 minutes later (ahead: refused and held);
    # opt_in_after: a new opt-in to promo a minute on; twice: written twice;
    # after_live_stop: a live STOP of the same moment first
    order: str = "plain"


@dataclass
class Case:
    row: Row
    path: str
    phone: str
    at: datetime
    request_id: str = ""


def matrix(brands: Iterable[str]) -> list[Row]:
    """Every time of each kind, and the orders: those that meet a hold or a live STOP
    for every brand (how revoke-all reads an opt-out decides what it resolves), the
    rest for acme alone."""
    rows = []
    for brand in brands:
        kinds = ["campaign", "brand", *{"acme": ["stopall"], "initech": ["own"]}.get(brand, [])]
        orders = ["hold_before", "corrected_opt_in", "corrected_time", "after_live_stop"]
        if brand == "acme":
            orders += ["hold_after", "corrected", "twice"]
        for kind in kinds:
            rows += [Row(brand, kind, when) for when in WHEN]
            rows += [Row(brand, kind, "normal", order) for order in orders]
            rows += [Row(brand, kind, when, "opt_in_after") for when in ("normal", "skew", "past")]
            rows.append(Row(brand, kind, "past", "hold_before"))
    return rows


_numbers = itertools.count(3000)


def body(row: Row) -> str:
    return "STOP" if row.kind in ("campaign", "own") else "STOPALL"


def campaign_of(row: Row) -> str | None:
    return {"campaign": "promo", "brand": None, "stopall": "promo", "own": "alerts"}[row.kind]


def written(case: Case, *, channel: bool = True) -> api.RecordOptOutRequest:
    """The opt-out as ``RecordOptOut`` and ``ImportConsents`` carry it."""
    changes: dict[str, Any] = dict(text=body(case.row))
    changes["channel"] = lpb.REVOCATION_CHANNEL_KEYWORD if channel else 0
    return opt_out(
        case.phone, case.row.brand, campaign_of(case.row), case.at, case.request_id, **changes
    )


def texted(case: Case, message_id: str | None) -> api.HandleInboundMessageRequest:
    to = SENDERS[case.row.brand][campaign_of(case.row) or "promo"]
    request = inbound(case.phone, to, body(case.row), case.at, case.request_id)
    request.message_id = f"SM{case.request_id[:12]}" if message_id is None else message_id
    return request


def csv_row(case: Case, *, channel: bool = True) -> dict[str, str]:
    return {
        "type": "opt_out",
        "import_id": case.request_id,
        "phone": case.phone,
        "brand": case.row.brand,
        "campaign": campaign_of(case.row) or "",
        "occurred_at": case.at.isoformat().replace("+00:00", "Z"),
        "channel": "keyword" if channel else "",
        "text": body(case.row),
    }


class Writer:
    """Writes each case's facts, keeping a token that covers them all."""

    def __init__(self, c: Client, tmp: Path, address: str) -> None:
        self.c, self.tmp, self.address = c, tmp, address
        self.token = ConsistencyToken({})
        self.files = itertools.count()
        self.now = datetime.now(UTC)  # the service's clock as the matrix writes

    def ahead(self, case: Case) -> bool:
        """Whether ``case`` is stamped past the 5 minutes of skew: refused and held."""
        return case.at > self.now + timedelta(minutes=5)

    def saw(self, token: str) -> None:
        if token:
            self.token = self.token.merge(ConsistencyToken.decode(token))

    async def refused_held(self, call: Any) -> None:
        """``call``, an opt-out that must be refused and held."""
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        info = held_info(refused.value)
        assert info, refused.value.details()
        self.saw(info["consistency_token"])

    async def hold(self, case: Case, now: datetime) -> None:
        """A refused RecordOptOut (no channel) of every campaign of the case's brand."""
        request = opt_out(case.phone, case.row.brand, None, now + HOLD_AT, channel=0)
        await self.refused_held(self.c.RecordOptOut(request))

    async def live_stop(self, case: Case) -> None:
        to = SENDERS[case.row.brand][campaign_of(case.row) or "promo"]
        w = await self.c.HandleInboundMessage(inbound(case.phone, to, body(case.row), case.at))
        self.saw(w.consistency_token)

    async def one(self, case: Case, *, refused: bool = False) -> None:
        """Write ``case``'s opt-out through its path, except the batched imports;
        ``refused``: the attempt with a detail wrong (no channel, no message id)."""
        expect_refusal = refused or self.ahead(case)
        if case.path == "record":
            call = self.c.RecordOptOut(written(case, channel=not refused))
        elif case.path == "inbound":
            call = self.c.HandleInboundMessage(texted(case, "" if refused else None))
        else:
            raise AssertionError(case.path)
        if expect_refusal:
            await self.refused_held(call)
        else:
            self.saw((await call).consistency_token)

    async def imports(self, cases: list[Case], *, refused: bool = False) -> None:
        """The import paths' cases, in one ``ImportConsents`` stream and one file."""
        grpc_cases = [c for c in cases if c.path == "import"]
        if grpc_cases:
            records = [
                api.ImportRecord(opt_out=written(c, channel=not refused)) for c in grpc_cases
            ]
            answers = await streamed(self.c, [api.ImportConsentsRequest(records=records)])
            for answer in answers:
                self.saw(answer.consistency_token)
                for r in answer.refusals:
                    case = grpc_cases[r.index]
                    assert refused or self.ahead(case), (case, r)
                    assert r.held_for_review, (case, r)
        cli_cases = [c for c in cases if c.path == "cli"]
        if cli_cases:
            path = self.tmp / f"export-{next(self.files)}.csv"
            rows = [csv_row(c, channel=not refused) for c in cli_cases]
            with path.open("w", newline="") as out:
                writer = csv.DictWriter(out, list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            code, out_text, err = await import_cli(
                str(path), "--quiet", "--address", self.address, token=TOKENS["admin"][0]
            )
            assert code in (0, 1), err
            up_to = re.search(r"ledger written up to: (\S+)", out_text + err)
            assert up_to, out_text + err  # reads wait for it
            self.saw(up_to.group(1))


@dataclass(frozen=True)
class Seen:
    """What the service answers for one number."""

    regular: tuple[tuple[bool, str], ...]  # per campaign (promo, alerts)
    confirmation: tuple[bool, ...]  # per campaign
    as_of: tuple[bool, str]  # CanSendAsOf of alerts just after the opt-out's time
    holds: int  # pending in the review queue
    opt_in_refused: bool  # the opt-in a minute on (corrected_opt_in, opt_in_after)


async def each(*calls: Awaitable[None]) -> None:
    """Await ``calls``, of numbers of their own, a few at a time."""
    for start in range(0, len(calls), 16):
        await asyncio.gather(*calls[start : start + 16])


async def run_matrix(
    runtime: Runtime, clock: Clock, tmp: Path, rows: list[Row], now: datetime
) -> dict[Row, dict[str, Seen]]:
    """Write every row through every path at ``now`` (the service's clock) and read
    back what each number is answered."""
    clock.now = now
    cases = [
        Case(row, path, f"+1415555{next(_numbers):04d}", now + WHEN[row.when])
        for row in rows
        for path in PATHS
    ]
    for case in cases:
        case.request_id = uuid.uuid4().hex
    async with client(runtime.address) as c:
        w = Writer(c, tmp, runtime.address)
        w.now = now
        # Every number opted in to both campaigns 40 days back (an hour back for the
        # opt-outs dated before it), in one import.
        opt_ins = []
        for case in cases:
            opted = now - (
                timedelta(hours=1) if case.row.when == "before_opt_in" else timedelta(days=40)
            )
            for campaign in SENDERS[case.row.brand]:
                opt_ins.append(
                    api.ImportRecord(opt_in=opt_in(case.phone, case.row.brand, campaign, opted))
                )
        for start in range(0, len(opt_ins), 1000):
            chunk = api.ImportConsentsRequest(records=opt_ins[start : start + 1000])
            for answer in await streamed(c, [chunk]):
                assert not answer.refusals, answer.refusals[0]
                w.saw(answer.consistency_token)

        # Before the opt-out: a hold, the path's own refused attempt, a live STOP.
        corrected = [c for c in cases if c.row.order in ("corrected", "corrected_opt_in")]
        await each(
            *(w.hold(case, now) for case in cases if case.row.order == "hold_before"),
            *(w.live_stop(case) for case in cases if case.row.order == "after_live_stop"),
            *(w.one(case, refused=True) for case in corrected if case.path not in IMPORTED),
        )
        await w.imports(corrected, refused=True)
        ahead = [
            replace(c, at=c.at + timedelta(minutes=11))
            for c in cases
            if c.row.order == "corrected_time"
        ]
        await each(*(w.one(case) for case in ahead if case.path not in IMPORTED))
        await w.imports(ahead)
        # The opt-out itself.
        await each(*(w.one(case) for case in cases if case.path not in IMPORTED))
        await w.imports(cases)
        # After it: a hold, the same opt-out again.
        twice = [c for c in cases if c.row.order == "twice"]
        await each(
            *(w.hold(case, now) for case in cases if case.row.order == "hold_after"),
            *(w.one(case) for case in twice if case.path not in IMPORTED),
        )
        await w.imports(twice)
        # A minute on, new consent to promo: it allows promo once nothing holds the number.
        clock.now = now + timedelta(minutes=1)
        again = [case for case in cases if case.row.order in ("corrected_opt_in", "opt_in_after")]
        refused_opt_ins: set[str] = set()
        if again:
            records = [
                api.ImportRecord(opt_in=opt_in(case.phone, case.row.brand, "promo", clock.now))
                for case in again
            ]
            for answer in await streamed(c, [api.ImportConsentsRequest(records=records)]):
                refused_opt_ins |= {again[r.index].phone for r in answer.refusals}
                w.saw(answer.consistency_token)

        # What each number is answered, read at least as fresh as every write.
        fresh = w.token.encode()
        seen: dict[str, dict[str, Any]] = {case.phone: {} for case in cases}
        for brand in sorted({r.brand for r in rows}):
            phones = [case.phone for case in cases if case.row.brand == brand]
            for campaign in SENDERS[brand]:
                for kind in (lpb.MESSAGE_KIND_REGULAR, lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION):
                    batch = await c.CanSendBatch(
                        api.CanSendBatchRequest(
                            brand=brand, campaign=campaign, phones=phones, message_kind=kind,
                            at_least_as_fresh=fresh,
                        )
                    )  # fmt: skip
                    for d in batch.decisions:
                        answer = (d.allowed, api.Reason.Name(d.reason))
                        if kind == lpb.MESSAGE_KIND_REGULAR:
                            seen[d.phone].setdefault("regular", []).append(answer)
                        else:
                            seen[d.phone].setdefault("confirmation", []).append(d.allowed)
            pending: dict[str, int] = {}
            page = ""
            while True:
                listed = await c.ListRevocationCandidates(
                    api.ListRevocationCandidatesRequest(
                        brand=brand, page_size=500, page_token=page, at_least_as_fresh=fresh
                    )
                )
                for candidate in listed.candidates:
                    phone = candidate.event.phone
                    pending[phone] = pending.get(phone, 0) + 1
                page = listed.next_page_token
                if not page:
                    break
            for phone in phones:
                seen[phone]["holds"] = pending.get(phone, 0)

        async def as_of(case: Case) -> None:
            at = min(case.at, now) + timedelta(seconds=1)
            r = await c.CanSendAsOf(
                api.CanSendAsOfRequest(
                    phone=case.phone, brand=case.row.brand, campaign="alerts", at=ts(at),
                    at_least_as_fresh=fresh,
                )
            )  # fmt: skip
            seen[case.phone]["as_of"] = (r.allowed, api.Reason.Name(r.reason))

        await each(*(as_of(case) for case in cases))
    out: dict[Row, dict[str, Seen]] = {}
    for case in cases:
        s = seen[case.phone]
        out.setdefault(case.row, {})[case.path] = Seen(
            tuple(s["regular"]),
            tuple(s["confirmation"]),
            s["as_of"],
            s["holds"],
            case.phone in refused_opt_ins,
        )
    return out


ACTIVE, REVOKED, ALL = "REASON_CONSENT_ACTIVE", "REASON_REVOKED", "REASON_REVOKED_BRAND_WIDE"
HELD = "REASON_REVOCATION_PENDING_REVIEW"
# What the README has RecordOptOut's numbers answered in a few rows, (promo, alerts),
# so that paths agreeing on a wrong answer fail too.
ANCHORS = {
    Row("acme", "campaign"): ((False, REVOKED), (True, ACTIVE)),
    Row("acme", "campaign", "ahead"): ((False, HELD), (False, HELD)),
    Row("acme", "brand", "before_opt_in"): ((True, ACTIVE), (True, ACTIVE)),
    Row("acme", "stopall"): ((False, ALL), (False, ALL)),
    Row("acme", "brand", "normal", "corrected_opt_in"): ((True, ACTIVE), (False, ALL)),
    Row("acme", "campaign", "normal", "corrected_opt_in"): ((False, HELD), (False, HELD)),
    Row("globex", "campaign"): ((False, REVOKED), (False, ALL)),
    Row("globex", "campaign", "past", "hold_before"): ((False, HELD), (False, HELD)),
    Row("globex", "campaign", "normal", "hold_before"): ((False, ALL), (False, ALL)),
    Row("initech", "own"): ((True, ACTIVE), (False, REVOKED)),
    Row("initech", "campaign"): ((False, REVOKED), (False, ALL)),
    Row("umbrella", "campaign", "past", "hold_before"): ((False, HELD), (False, HELD)),
    Row("umbrella", "campaign", "normal", "corrected_opt_in"): ((True, ACTIVE), (False, ALL)),
}


def off_anchor(results: dict[Row, dict[str, Seen]]) -> list[str]:
    """The anchored rows answered otherwise, and an opt-in stated before an opt-out
    stamped ahead within the skew not refused."""
    found = [
        f"{row}: {results[row]['record'].regular}, the README's {want}"
        for row, want in ANCHORS.items()
        if row in results and results[row]["record"].regular != want
    ]
    # The confirmation (promo, alerts): a live opt-out's owed, an imported one's not,
    # even after a live STOP of the same moment, but a live hold it resolves owes its own.
    confirmations = {
        (Row("acme", "campaign", "normal", "after_live_stop"), "record"): (True, False),
        (Row("acme", "campaign", "normal", "after_live_stop"), "cli"): (False, False),
        (Row("acme", "brand", "normal", "hold_before"), "import"): (True, True),
        (Row("acme", "brand", "past"), "inbound"): (False, False),
    }
    found += [
        f"{row} {path}: confirmation {results[row][path].confirmation}, the README's {want}"
        for (row, path), want in confirmations.items()
        if row in results and results[row][path].confirmation != want
    ]
    found += [
        f"{row}: the opt-in stated before it was not refused"
        for row, by_path in results.items()
        if (row.when, row.order) == ("skew", "opt_in_after")
        and not by_path["record"].opt_in_refused
    ]
    return found


def disagreements(results: dict[Row, dict[str, Seen]]) -> list[str]:
    """Each row where a path answers otherwise than ``RecordOptOut``'s, beyond the
    one difference the README has: an imported opt-out owes no confirmation
    ("Importing from another platform"), even after a live STOP of the same moment
    (it is the later by ledger order), but a live hold it resolves ("revoked", by a
    brand-wide reach) owes the held opt-out's, as the write's resolution does."""
    found = []
    for row, by_path in results.items():
        live = by_path["record"]
        for path, s in by_path.items():
            expected = live
            if path in IMPORTED and not (row.order == "hold_before" and live.holds == 0):
                expected = replace(live, confirmation=(False,) * len(live.confirmation))
            if s != expected:
                found.append(f"{row}: {path} {s}, where RecordOptOut's is {live}")
    return found


async def started(module_serve: Any, *, on_kafka: bool) -> tuple[Runtime, Clock]:
    """A service with each brand's two campaigns (initech's alerts under its own
    revoke-all) and globex's SetBrandPolicy, its clock an hour before the matrix's."""
    clock = Clock(noon_in_los_angeles(ahead=timedelta(hours=1)))
    campaigns = [
        define(brand, campaign, clock.now - timedelta(days=90), [number],
               revoke_all=(brand == "initech" and campaign == "alerts"))
        for brand, numbers in SENDERS.items()
        for campaign, number in numbers.items()
    ]  # fmt: skip
    runtime = await module_serve(on_kafka=on_kafka, clock=clock, campaigns=campaigns)
    async with client(runtime.address) as c:
        request = api.SetBrandPolicyRequest(request_id="ra", brand="globex", revoke_all=True)
        await c.SetBrandPolicy(request)
    return runtime, clock


async def test_one_opt_out_answers_alike_by_every_path(module_serve, tmp_path):
    """On the embedded default's ledger, the whole matrix; umbrella's rows after the
    FCC's date, the clock moved on to a fortnight past it."""
    runtime, clock = await started(module_serve, on_kafka=False)
    rows = matrix(["acme", "globex", "initech"])
    results = await run_matrix(runtime, clock, tmp_path, rows, clock.now + timedelta(hours=1))
    after = noon_in_los_angeles(ahead=REVOKE_ALL + timedelta(days=14) - datetime.now(UTC))
    results |= await run_matrix(runtime, clock, tmp_path, matrix(["umbrella"]), after)
    found = off_anchor(results) + disagreements(results)
    assert not found, "\n".join(found)


async def test_one_opt_out_answers_alike_by_every_path_on_kafka(module_serve, tmp_path):
    """On Kafka, the rows that meet a hold or a live STOP."""
    runtime, clock = await started(module_serve, on_kafka=True)
    rows = [
        Row(brand, kind, "normal", order)
        for brand, kind in (("acme", "brand"), ("acme", "campaign"), ("globex", "campaign"))
        for order in ("plain", "hold_before", "corrected_opt_in", "after_live_stop")
    ]
    results = await run_matrix(runtime, clock, tmp_path, rows, clock.now + timedelta(hours=1))
    found = off_anchor(results) + disagreements(results)
    assert not found, "\n".join(found)
