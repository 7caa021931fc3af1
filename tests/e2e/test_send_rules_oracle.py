"""An oracle for the rules that deny a send that has consent, held to the service
through gRPC.

``test_consent_oracle.py`` models consent and leaves quiet hours and caps out. The
model here is written from the README alone ("The policy" 5 and 6, "State rules",
"A campaign's rules over time", "The moment asked about") and the state rules' data
file: every number has a written promotional opt-in to every campaign, so only these
rules can deny. Each seed defines campaigns with random valid rules (promotional or
informational, quiet hours of their own or none, ``quiet_hours_apply_to_all``, a
daily cap, frequency caps), some changed from a moment on, numbers of several area
codes (states with rules of their own, closed days and caps, and states without;
area codes of several zones; toll-free numbers; some opt-ins giving a
``proof.region``, some subscribers saying later where they are), and records
sends at random times around a moment with something to trip on (a DST change, a
holiday the states close, a Sunday), through ``RecordMessageSent`` and
``RecordMessagesSent``, one last send perhaps stamped a little ahead of the clock.
``CanSendAsOf`` (``known_at`` now), ``CanSend`` (now, a past ``at``, a future
``at``) and ``CanSendBatch`` (now, a future ``at``; and, naming numbers twice or
three times in two spellings, a past ``at`` too) are asked of many moments, some
on the local edges of the windows and of the caps, and must answer as the model
does: allowed or not, for the same reason, and naming a rule that decided.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import holidays
import phonenumbers
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.duration_pb2 import Duration
from phonenumbers import timezone

from tests.e2e.harness import Client, Clock, client, define, opt_in, sent, serving, ts
from tests.e2e.test_consent_oracle import Tally, few_at_a_time, merged

pytestmark = pytest.mark.asyncio(loop_scope="session")

RULES = json.loads(
    (Path(__file__).parents[2] / "ledger" / "rules" / "us_state_rules.json").read_text()
)
NY, CHI, DEN, LA = (
    ZoneInfo(z)
    for z in ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
)
# libphonenumber's zones for Alaska's numbers: Hawaii-Aleutian time (Adak) is
# Honolulu's in winter, and its data names both.
ALASKA = ("America/Juneau", "America/Adak", "America/Anchorage", "Pacific/Honolulu")
# Area code: its state and its zones (every zone of the area code in libphonenumber's
# data, README "State rules": 850 spans Eastern and Central).
AREAS: dict[str, tuple[str, tuple[ZoneInfo, ...]]] = {
    "205": ("AL", (CHI,)),
    "203": ("CT", (NY,)),
    "305": ("FL", (NY,)),
    "850": ("FL", (NY, CHI)),
    "502": ("KY", (NY,)),
    "504": ("LA", (CHI,)),
    "617": ("MA", (NY,)),
    "410": ("MD", (NY,)),
    "313": ("MI", (NY,)),
    "601": ("MS", (CHI,)),
    "505": ("NM", (DEN,)),
    "405": ("OK", (CHI,)),
    "215": ("PA", (NY,)),
    "401": ("RI", (NY,)),
    "512": ("TX", (CHI,)),
    "801": ("UT", (DEN,)),
    "206": ("WA", (LA,)),
    "307": ("WY", (DEN,)),
    "415": ("CA", (LA,)),
    "212": ("NY", (NY,)),
    "602": ("AZ", (ZoneInfo("America/Phoenix"),)),
    "808": ("HI", (ZoneInfo("Pacific/Honolulu"),)),
    "907": ("AK", tuple(ZoneInfo(z) for z in ALASKA)),
}
# The zones each state keeps, as far as the model needs them (a state with rules of
# its own, or one an opt-in names): where only the state is known of the recipient's
# place, its rules hold in all of them (README "State rules"). Alabama's Phenix City
# keeps Eastern time; Michigan's west keeps Central.
KEPT: dict[str, tuple[ZoneInfo, ...]] = {
    "AL": (CHI, NY), "CT": (NY,), "FL": (NY, CHI), "KY": (NY, CHI), "LA": (CHI,),
    "MA": (NY,), "MD": (NY,), "MI": (NY, CHI), "MS": (CHI,), "NM": (DEN,), "OK": (CHI,),
    "PA": (NY,), "RI": (NY,), "TX": (CHI, DEN), "UT": (DEN,), "WA": (LA,), "WY": (DEN,),
    "NY": (NY,), "CA": (LA,),
}  # fmt: skip
# A toll-free number may ring anywhere in the plan: libphonenumber gives it every
# zone of it, Guam to Adak, and no state, so it is held to every state's rules.
TOLL_FREE = tuple(
    ZoneInfo(z) for z in timezone.time_zones_for_number(phonenumbers.parse("+18002221234"))
)
REGIONS = sorted(KEPT)  # the states an opt-in may name as the subscriber's (proof.region)

# Moments with something to trip on, each the service's "now" of its seeds: sends
# and questions fall in the twelve days before it and questions up to nine after.
ANCHORS = (
    datetime(2026, 12, 29, 20, tzinfo=UTC),  # Christmas on a Friday, the weekend after
    datetime(2027, 2, 12, 20, tzinfo=UTC),  # Mardi Gras (9 Feb), Presidents' Day
    datetime(2027, 3, 16, 20, tzinfo=UTC),  # DST begins 14 Mar
    datetime(2027, 3, 29, 20, tzinfo=UTC),  # Good Friday (26 Mar), Easter
    datetime(2027, 6, 16, 20, tzinfo=UTC),  # Flag Day (Mon 14 Jun), Juneteenth observed
    datetime(2027, 7, 6, 20, tzinfo=UTC),  # 4 July a Sunday, observed the 5th
    datetime(2027, 11, 9, 20, tzinfo=UTC),  # election day (2 Nov), DST ends 7 Nov
)
BEFORE, AFTER = timedelta(days=12), timedelta(days=9)
WINDOWS = (30, 120, 360, 1440, 3 * 1440, 7 * 1440)  # frequency caps' windows, minutes


# ---------------------------------------------------------------- the model


def easter(year: int) -> date:
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month = (h + l_ - 7 * m + 114) // 31
    day = (h + l_ - 7 * m + 114) % 31 + 1
    return date(year, month, day)


def extra_holiday(name: str, year: int) -> date:
    """The holidays a statute names beyond the ``holidays`` package's."""
    if name == "mardi_gras":
        return easter(year) - timedelta(days=47)
    if name == "good_friday":
        return easter(year) - timedelta(days=2)
    if name == "flag_day":
        return date(year, 6, 14)
    assert name == "general_election_day", name
    first_monday = date(year, 11, 1) + timedelta(days=(7 - date(year, 11, 1).weekday()) % 7)
    return first_monday + timedelta(days=1)


def closed_holiday(row: dict, day: date) -> bool:
    if row.get("holidays") != "closed":
        return False
    if day in holidays.country_holidays("US", subdiv=row["state"], years=day.year):
        return True
    return any(extra_holiday(n, day.year) == day for n in row.get("extra_holidays") or ())


def minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def row_window(row: dict, day: date) -> tuple[int, int] | None:
    """The row's hours on a local ``day`` in minutes, None when closed all day."""
    if closed_holiday(row, day):
        return None
    hours = row["hours"]
    span = (
        hours["sunday"]
        if day.weekday() == 6
        else hours["saturday"]
        if day.weekday() == 5
        else hours["weekdays"]
    )
    return None if span is None else (minutes(span[0]), minutes(span[1]))


def in_force(row: dict, day: date) -> bool:
    return date.fromisoformat(row["effective"]) <= day


@dataclass
class Rules:
    promotional: bool
    quiet: tuple[int, int] | None  # the campaign's own window, minutes of the local day
    apply_to_all: bool
    daily_cap: int | None
    caps: list[tuple[int, int]]  # (limit, window in minutes)

    def policy(self) -> dict:
        policy: dict = dict(
            purpose=lpb.CAMPAIGN_PURPOSE_PROMOTIONAL
            if self.promotional
            else lpb.CAMPAIGN_PURPOSE_INFORMATIONAL,
            quiet_hours_apply_to_all=self.apply_to_all,
            frequency_caps=[
                lpb.FrequencyCap(limit=n, window=Duration(seconds=w * 60)) for n, w in self.caps
            ],
        )
        if self.quiet is not None:
            policy["quiet_hours"] = lpb.QuietHours(
                start_minute_of_day=self.quiet[0], end_minute_of_day=self.quiet[1]
            )
        if self.daily_cap is not None:
            policy["daily_cap"] = self.daily_cap
        return policy


@dataclass
class Recipient:
    phone: str
    state: str
    zones: tuple[ZoneInfo, ...]
    region: str | None  # given with the opt-ins
    moved: tuple[datetime, str] | None = None  # RecordSubscriberLocation: when, where

    def region_at(self, at: datetime) -> str | None:
        """The latest word of where the subscriber is, in world order, by ``at``."""
        return self.moved[1] if self.moved is not None and self.moved[0] <= at else self.region

    def candidates(self, at: datetime) -> list[tuple[str, tuple[ZoneInfo, ...]]]:
        """Each candidate state with the zones its rules are read in: the recipient's
        zones (the number's, and those a given state adds) where the state keeps them,
        else every zone the state keeps."""
        out = []
        region = self.region_at(at)
        states: list[str | None] = [self.state, region]
        if self.state == "US":  # no state: every state's rules, unless one was given
            states = [region] if region else sorted({r["state"] for r in RULES["states"]})
        for state in states:
            if state is None or state not in KEPT:
                continue
            own = tuple(z for z in self.all_zones(at) if z in KEPT[state])
            out.append((state, own or KEPT[state]))
        return out

    def all_zones(self, at: datetime) -> list[ZoneInfo]:
        """The number's zones; a state the subscriber gave adds its every zone."""
        zones, region = list(self.zones), self.region_at(at)
        for zone in KEPT[region] if region is not None else ():
            if zone not in zones:
                zones.append(zone)
        return zones


Answer = tuple[str, int, frozenset[str]]
CAMPAIGN = frozenset({"campaign"})
ALLOW = ("allowed", api.REASON_CONSENT_ACTIVE, frozenset({""}))


def local_minute(at: datetime, zone: ZoneInfo) -> tuple[date, int]:
    t = at.astimezone(zone)
    return t.date(), t.hour * 60 + t.minute


@dataclass
class Model:
    rules: dict[str, Rules]
    recipients: dict[str, Recipient]
    sends: list[tuple[str, str, datetime]] = field(default_factory=list)  # phone, campaign, at
    # A campaign's rules changed (ChangeCampaignPolicy) from a moment on.
    changes: dict[str, tuple[datetime, Rules]] = field(default_factory=dict)
    # Sends stamped a little ahead of the service's clock, with that clock's time
    # when they were recorded: from then on they count as gone out.
    ahead: list[tuple[str, str, datetime, datetime]] = field(default_factory=list)

    def rules_at(self, campaign: str, at: datetime) -> Rules:
        """The rules in force at ``at`` ("A campaign's rules over time")."""
        change = self.changes.get(campaign)
        return change[1] if change is not None and change[0] <= at else self.rules[campaign]

    def decide(self, phone: str, campaign: str, at: datetime, pending: int = 0) -> Answer:
        """("allowed" or "denied", the reason, the rules that may have decided), with
        ``pending`` sends allowed before in the same batch counted as sent at ``at``
        ("frequency caps": a batch naming a number more than once)."""
        r, who = self.rules_at(campaign, at), self.recipients[phone]
        mine = [s for p, c, s in self.sends if p == phone and c == campaign and s <= at]
        mine += [at] * pending
        # "A send stamped a little after now (a sender's clock ahead) counts."
        mine += [at for p, c, s, rec in self.ahead if (p, c) == (phone, campaign) and rec <= at < s]
        mine += [s for p, c, s, rec in self.ahead if (p, c) == (phone, campaign) and s <= at]
        # 5. caps: the campaign's rolling windows, its daily cap in the recipient's
        # local day (every zone), and a promotional campaign the states' caps.
        for limit, window in r.caps:
            if sum(1 for s in mine if s > at - timedelta(minutes=window)) >= limit:
                return "denied", api.REASON_FREQUENCY_CAP_REACHED, CAMPAIGN
        if r.daily_cap is not None:
            for zone in who.all_zones(at):
                day = at.astimezone(zone).date()
                if sum(1 for s in mine if s.astimezone(zone).date() == day) >= r.daily_cap:
                    return "denied", api.REASON_DAILY_CAP_REACHED, CAMPAIGN
        states: set[str] = set()
        if r.promotional:
            for state, zones in who.candidates(at):
                for row in RULES["states"]:
                    cap = row.get("cap")
                    if row["state"] != state or cap is None:
                        continue
                    if not any(in_force(row, at.astimezone(z).date()) for z in zones):
                        continue
                    recent = sum(1 for s in mine if s > at - timedelta(hours=cap["window_hours"]))
                    if recent >= cap["limit"]:
                        states.add(f"state:{state}")
        # The README leaves the order of the states open: any that denies may answer.
        if states:
            return "denied", api.REASON_FREQUENCY_CAP_REACHED, frozenset(states)
        # 6. quiet hours, where they apply: federal, then the states', then the campaign's.
        if not (r.promotional or r.apply_to_all):
            return ALLOW
        federal = RULES["federal"]
        for zone in who.all_zones(at):
            day, minute = local_minute(at, zone)
            window = row_window(federal, day)
            assert window is not None
            if not window[0] <= minute < window[1]:
                return "denied", api.REASON_QUIET_HOURS, frozenset({"federal"})
        for state, zones in who.candidates(at):
            for row in RULES["states"]:
                if row["state"] != state:
                    continue
                for zone in zones:
                    day, minute = local_minute(at, zone)
                    if not in_force(row, day):
                        continue
                    window = row_window(row, day)
                    if window is None or not window[0] <= minute < window[1]:
                        states.add(f"state:{state}")
        if states:
            return "denied", api.REASON_QUIET_HOURS, frozenset(states)
        if r.quiet is not None:
            for zone in who.all_zones(at):
                _, minute = local_minute(at, zone)
                if not r.quiet[0] <= minute < r.quiet[1]:
                    return "denied", api.REASON_QUIET_HOURS, CAMPAIGN
        return ALLOW


# ---------------------------------------------------------------- the histories


def random_rules(rng: random.Random) -> Rules:
    quiet = None
    if rng.random() < 0.6:
        start = rng.randrange(8 * 4, 20 * 4) * 15
        end = rng.randrange(start // 15 + 1, 21 * 4 + 1) * 15
        quiet = (start, end)
    caps = []
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        caps.append((rng.randint(1, 4), rng.choice(WINDOWS)))
    return Rules(
        promotional=rng.random() < 0.6,
        quiet=quiet,
        apply_to_all=rng.random() < 0.5,
        daily_cap=rng.choice((None, None, 1, 2, 3, 5)),
        caps=caps,
    )


@dataclass
class Seed:
    seed: int
    anchor: datetime
    model: Model
    campaigns: list[str]
    sends: list[tuple[str, str, datetime]]
    moments: list[datetime]


def make_seed(seed: int) -> Seed:
    rng = random.Random(seed)
    anchor = ANCHORS[seed % len(ANCHORS)]
    campaigns = [f"s{seed}c{i}" for i in range(rng.randint(2, 3))]
    rules = {c: random_rules(rng) for c in campaigns}
    recipients = {}
    for i, ac in enumerate(rng.sample(sorted(AREAS), 5)):
        phone = f"+1{ac}{200 + seed % 800:03d}{1000 + i:04d}"
        state, zones = AREAS[ac]
        region = rng.choice(REGIONS) if rng.random() < 0.35 else None
        recipients[phone] = Recipient(phone, state, zones, region)
    model = Model(rules, recipients)
    # Sends in bursts, so the caps have something to count: each at a whole minute,
    # before now, while every question is asked at half a minute past one.
    phones = sorted(recipients)
    sends = []
    start = anchor - BEFORE
    for _ in range(rng.randint(3, 6)):
        centre = start + timedelta(minutes=rng.randrange(int(BEFORE.total_seconds() // 60) - 600))
        phone, campaign = rng.choice(phones), rng.choice(campaigns)
        for _ in range(rng.randint(1, 5)):
            at = centre + timedelta(minutes=rng.randrange(0, 600))
            who = phone if rng.random() < 0.8 else rng.choice(phones)
            what = campaign if rng.random() < 0.8 else rng.choice(campaigns)
            sends.append((who, what, at.replace(second=0, microsecond=0)))
    model.sends = sends
    moments: list[datetime] = []
    half = timedelta(seconds=30)
    for _ in range(8):
        m = start + timedelta(minutes=rng.randrange(int((BEFORE + AFTER).total_seconds() // 60)))
        moments.append(m.replace(second=30, microsecond=0))
    # The local edges of the windows, on days around the anchor, in a recipient's zones.
    edges = [7 * 60, 8 * 60, 9 * 60, 10 * 60, 12 * 60, 17 * 60, 18 * 60, 19 * 60, 20 * 60, 21 * 60]
    for c in campaigns:
        if rules[c].quiet is not None:
            edges += list(rules[c].quiet)
    for _ in range(10):
        zone = rng.choice(recipients[rng.choice(phones)].all_zones(anchor))
        day = (anchor + timedelta(days=rng.randint(-12, 8))).astimezone(zone).date()
        edge = rng.choice(edges)
        local = datetime.combine(day, time(edge // 60 % 24, edge % 60), tzinfo=zone)
        # Both sides of the edge, and the edge itself: a window is [start, end).
        for m in (local - half, local - timedelta(seconds=1), local, local + half):
            moments.append(m.astimezone(UTC))
    # The edges of the caps' windows: a send leaving one, and a send's own day.
    for _ in range(6):
        if not sends:
            break
        _, c, s = rng.choice(sends)
        window = rng.choice([w for _, w in rules[c].caps] + [1440])
        moments += [s + timedelta(minutes=window) - half, s + timedelta(minutes=window) + half]
        moments.append(s + half)
    # Some campaigns' rules change (ChangeCampaignPolicy) at a moment before now.
    changes = {}
    for c in campaigns:
        if rng.random() < 0.4:
            when = anchor - timedelta(minutes=rng.randrange(60, 10 * 1440))
            new = random_rules(rng)
            new.promotional = rules[c].promotional
            changes[c] = (when, new)
            moments += [when - half, when + half]
    model.changes = changes
    if rng.random() < 0.3:
        # A toll-free number: no moment suits every zone it may ring in.
        region = rng.choice(REGIONS) if rng.random() < 0.5 else None
        phone = f"+1800{200 + seed % 800:03d}{1000 + len(recipients):04d}"
        recipients[phone] = Recipient(phone, "US", TOLL_FREE, region)
    for who in recipients.values():
        if rng.random() < 0.25:
            # The subscriber says where they are now (a move), from a moment on.
            when = anchor - timedelta(minutes=rng.randrange(60, 10 * 1440))
            who.moved = (when, rng.choice(REGIONS))
            moments += [when - half, when + half]
    lo, hi = start, anchor + AFTER
    moments = sorted(
        {m for m in moments if lo <= m <= hi and abs(m - anchor) > timedelta(minutes=6)}
    )
    return Seed(seed, anchor, model, campaigns, sends, moments)


async def set_up(admin: Client, c: Client, brand: str, s: Seed) -> list[str]:
    """Define the seed's campaigns and opt every number in to each; the tokens."""
    tokens = []
    for name in s.campaigns:
        request = define(brand, name, s.anchor - timedelta(days=30), **s.model.rules[name].policy())
        tokens.append((await admin.DefineCampaign(request)).consistency_token)
        if name in s.model.changes:
            when, rules = s.model.changes[name]
            change = api.ChangeCampaignPolicyRequest(
                request_id=uuid.uuid4().hex, brand=brand, campaign=name,
                policy=lpb.CampaignPolicy(**rules.policy()), occurred_at=ts(when),
            )  # fmt: skip
            tokens.append((await admin.ChangeCampaignPolicy(change)).consistency_token)
    for who in s.model.recipients.values():
        for name in s.campaigns:
            request = opt_in(who.phone, brand, name, s.anchor - timedelta(days=20))
            if who.region is not None:
                request.proof.region = who.region
            tokens.append((await c.RecordOptIn(request)).consistency_token)
        if who.moved is not None:
            located = api.RecordSubscriberLocationRequest(
                request_id=uuid.uuid4().hex, phone=who.phone, brand=brand,
                region=who.moved[1], occurred_at=ts(who.moved[0]),
            )  # fmt: skip
            tokens.append((await c.RecordSubscriberLocation(located)).consistency_token)
    return tokens


async def record_sends(c: Client, brand: str, sends: list[tuple[str, str, datetime]]) -> str:
    """``sends`` by ``RecordMessageSent`` (one) or ``RecordMessagesSent``; the token."""
    if len(sends) == 1:
        phone, name, at = sends[0]
        w = await c.RecordMessageSent(sent(phone, brand, name, at))
        return w.consistency_token
    messages = [
        api.SentMessage(
            phone=phone, campaign=name, message_id=f"SM{uuid.uuid4().hex[:16]}",
            occurred_at=ts(at), included_opt_out_language=True, identified_sender=True,
        )
        for phone, name, at in sends
    ]  # fmt: skip
    request = api.RecordMessagesSentRequest(
        request_id=uuid.uuid4().hex, brand=brand, messages=messages
    )
    return (await c.RecordMessagesSent(request)).consistency_token


# ---------------------------------------------------------------- the comparison


def compare(
    tally: Tally, where: str, expected: Answer, allowed: bool, reason: int,
    rule: str, detail: str,
) -> None:  # fmt: skip
    tally.checks += 1
    if allowed != (expected[0] == "allowed") or reason != expected[1] or rule not in expected[2]:
        tally.disagreements.append(
            f"{where}: model {expected[0]} {api.Reason.Name(expected[1])} {sorted(expected[2])}, "
            f"service {'allowed' if allowed else 'denied'} {api.Reason.Name(reason)} {rule}: "
            f"{detail}"
        )


# Answers a busy machine gives, fail-closed, that ask to be asked again.
BUSY = frozenset({api.REASON_NOT_CONSISTENT, api.REASON_INTERNAL_ERROR})


async def retried(rpc: Callable[[Any], Awaitable[Any]], request: Any) -> Any:
    """``rpc``'s answer, asked again while the service is too busy to give one: an
    audit read (``CanSend`` of a past moment) is UNAVAILABLE when its access-log entry
    cannot be written, and a read the database or the view is late for is denied
    NOT_CONSISTENT or INTERNAL_ERROR, each saying to try again."""
    for attempt in range(5):
        try:
            answer = await rpc(request)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                raise
        else:
            decisions = getattr(answer, "decisions", None) or [answer]
            if attempt == 4 or not any(d.reason in BUSY for d in decisions):
                return answer
        await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def check(
    c: Client, brand: str, s: Seed, now: datetime, moments: list[datetime], fresh: str,
    tally: Tally, *, last: bool,
) -> None:  # fmt: skip
    """Ask of each of ``moments``: ``CanSendAsOf`` with ``known_at`` now and, for some,
    ``CanSend`` with that ``at`` (in hindsight, or provisional ahead of now), and of
    two past ones ``CanSendBatch`` naming numbers more than once; with ``last``,
    ``CanSend`` and ``CanSendBatch`` now and ahead as well."""
    model, calls = s.model, []
    phones = sorted(model.recipients)
    for name in s.campaigns:
        for phone in phones:
            asked = dict(phone=phone, brand=brand, campaign=name, at_least_as_fresh=fresh)
            label = f"seed {s.seed} {phone} {name}"
            if last:
                calls.append(
                    (
                        f"{label} CanSend now",
                        phone,
                        name,
                        now,
                        (c.CanSend, api.CanSendRequest(**asked)),
                    )
                )
            for m in moments:
                if m <= now:
                    as_of = api.CanSendAsOfRequest(**asked, at=ts(m), known_at=ts(now))
                    calls.append(
                        (
                            f"{label} CanSendAsOf {m.isoformat()}",
                            phone,
                            name,
                            m,
                            (c.CanSendAsOf, as_of),
                        )
                    )
                if m > now or m.minute % 3 == 0:
                    request = api.CanSendRequest(**asked, at=ts(m))
                    calls.append(
                        (
                            f"{label} CanSend at {m.isoformat()}",
                            phone,
                            name,
                            m,
                            (c.CanSend, request),
                        )
                    )
    answers = await few_at_a_time((retried(*call) for *_, call in calls), at_once=8)
    for (label, phone, name, m, _), a in zip(calls, answers, strict=True):
        compare(tally, label, model.decide(phone, name, m), a.allowed, a.reason, a.rule, a.detail)
    # Each number named once, twice (the second time spelt another way) or three
    # times: each entry is answered as if those allowed before it had been sent then.
    repeated = [
        spelt_another_way(p) if k == 1 else p
        for i, p in enumerate(phones)
        for k in range(1 + i % 3)
    ]
    ahead = [m for m in moments if m > now]
    planned: list[tuple[list[str], datetime | None]] = [
        (repeated, m) for m in [m for m in moments if m <= now and m.minute % 3 == 0][:2]
    ]
    if last:
        planned += [(phones, m) for m in [None, *ahead[:3]]]
        planned += [(repeated, m) for m in [None, *ahead[:2]]]
    batches = []
    for name in s.campaigns:
        for entries, m in planned:
            request = api.CanSendBatchRequest(
                brand=brand, campaign=name, phones=entries, at_least_as_fresh=fresh
            )
            if m is not None:
                request.at.CopyFrom(ts(m))
            batches.append((name, m or now, retried(c.CanSendBatch, request)))
    answered = await asyncio.gather(*(b for *_, b in batches))
    for (name, m, _), batch in zip(batches, answered, strict=True):
        allowed: dict[str, int] = {}
        for d in batch.decisions:
            phone, before = canonical(d.phone), allowed.get(canonical(d.phone), 0)
            label = f"seed {s.seed} {d.phone} {name} CanSendBatch {m.isoformat()}"
            if before:
                label += f" after {before} allowed in the batch"
            expected = model.decide(phone, name, m, before)
            if expected[0] == "allowed":
                allowed[phone] = before + 1
            compare(tally, label, expected, d.allowed, d.reason, d.rule, d.detail)


def spelt_another_way(phone: str) -> str:
    """A NANP number in E.164 as a person writes it: +1 (415) 555-0100."""
    return f"+1 ({phone[2:5]}) {phone[5:8]}-{phone[8:]}"


def canonical(phone: str) -> str:
    """``spelt_another_way``'s number in E.164."""
    return "+" + "".join(ch for ch in phone if ch.isdigit())


async def run_seed(
    admin: Client, c: Client, s: Seed, now: datetime, fresh: Callable[[str], str], tally: Tally
) -> None:
    """The seed's sends in the order they went out, a few per write, and after each
    write the questions about moments before the next: the service's recorded times
    follow the real clock, not the test's, so a send recorded before a moment asked
    about counts there even when it is stamped after it ("a send the ledger had
    recorded by then ... counts"); asked before the later sends are written, no send
    is stamped after the moment."""
    for t in await set_up(admin, c, "acme", s):
        fresh(t)
    rng = random.Random(s.seed + 1)
    pending = sorted(s.sends, key=lambda x: x[2])
    before = [m for m in s.moments if not pending or m < pending[0][2]]
    await check(c, "acme", s, now, before, fresh(""), tally, last=False)
    while pending:
        k = rng.randint(1, 4)
        chunk, pending = pending[:k], pending[k:]
        fresh(await record_sends(c, "acme", chunk))
        upto = pending[0][2] if pending else now
        moments = [m for m in s.moments if chunk[-1][2] < m < upto]
        await check(c, "acme", s, now, moments, fresh(""), tally, last=False)
        tally.writes["sends in one call" if k == 1 else "sends in a batch"] += len(chunk)
    if rng.random() < 0.5:
        # A sender's clock a little ahead: the send counts from now on.
        phone, name = rng.choice(sorted(s.model.recipients)), rng.choice(s.campaigns)
        stamped = now + timedelta(minutes=2)
        fresh(await record_sends(c, "acme", [(phone, name, stamped)]))
        s.model.ahead.append((phone, name, stamped, now))
        tally.writes["sends stamped ahead"] += 1
    ahead = [m for m in s.moments if m > now]
    await check(c, "acme", s, now, ahead, fresh(""), tally, last=True)


# CI asks one seed on each ledger, about a DST change each (autumn with election
# day on the embedded one, spring on Kafka), each with a Michigan number. A
# deeper search (minutes): CONSENT_SEND_RULES_FIRST_SEED=100 CONSENT_SEND_RULES_SEEDS=100,
# with pytest --timeout=0 (CONSENT_SEND_RULES_DUMP=<file> writes every disagreement).
FIRST_SEED = os.environ.get("CONSENT_SEND_RULES_FIRST_SEED")
SEEDS = int(os.environ.get("CONSENT_SEND_RULES_SEEDS", "20"))
CI_SEEDS = {"embedded": (76,), "kafka": (16,)}


@pytest.mark.parametrize("ledger", ["embedded", "kafka"])
async def test_quiet_hours_and_caps_answer_as_the_readme_says(
    ledger, tmp_path, postgres_dsn, kafka_bootstrap
):
    numbers: Iterable[int] = CI_SEEDS[ledger]
    if FIRST_SEED is not None and ledger == "embedded":
        numbers = range(int(FIRST_SEED), int(FIRST_SEED) + SEEDS)
    # Seeds of one anchor together, anchors in order: the service's clock only moves on.
    seeds = sorted((make_seed(n) for n in numbers), key=lambda s: (s.anchor, s.seed))
    clock = Clock(seeds[0].anchor)
    bootstrap = kafka_bootstrap if ledger == "kafka" else None
    tally = Tally()
    async with (
        serving(tmp_path, postgres_dsn, bootstrap, name="sendrules", clock=clock) as rt,
        client(rt.address, "acme-app") as acme,
        client(rt.address) as admin,
    ):
        w = await admin.DefineCampaign(define("acme", "first", clock.now - timedelta(days=30)))
        fresh = merged([w.consistency_token])
        for s in seeds:
            clock.now = max(clock.now, s.anchor)
            await run_seed(admin, acme, s, clock.now, fresh, tally)
    if os.environ.get("CONSENT_SEND_RULES_DUMP"):
        Path(os.environ["CONSENT_SEND_RULES_DUMP"]).write_text("\n".join(tally.disagreements))
    tally.assert_agreed(f"send rules: {len(seeds)} seeds")
