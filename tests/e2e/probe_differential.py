"""A randomized differential probe of the read side (not part of the suite: run it by
name, ``pytest tests/e2e/probe_differential.py``; PROBE_SEED and PROBE_STEPS choose).

One seeded mix of writes goes to a Kafka ledger through two instances (A and B) and,
the same requests, to the embedded default (E). Then every (number, brand, campaign)
is asked at several moments through CanSend, CanSendBatch, CanSendAsOf and GetConsent,
on A, on B, on A restarted, on A after ``consent-ledger rebuild``, and on E; every
answer that must agree is compared.

Knobs (environment): PROBE_SEED (1), PROBE_STEPS (120 writes), PROBE_PHONES (20),
PROBE_ROUNDS (3 rounds of reads, the writes split between them), PROBE_LIVE (the
service clock follows the real one, so recorded times sit near the facts' own; frozen
10 minutes ahead while reading), PROBE_NO_KAFKA (A and B on one embedded ledger
instead), PROBE_VERBOSE (print each refused write). Moments that may legitimately
differ are not compared: an ``at`` within the five minutes of allowed skew is a check
of now for CanSend but a past moment for CanSendAsOf."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.duration_pb2 import Duration

from ledger.ports import ConsistencyToken
from tests.e2e.harness import (
    Client,
    Clock,
    client,
    define,
    defined,
    held_info,
    inbound,
    kafka_settings,
    noon_in_los_angeles,
    opt_in,
    opt_out,
    running,
    sent,
    service_settings,
    streamed,
    ts,
    write_tokens,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[2]

SENDERS = {
    ("acme", "promo"): "+12125550301",
    ("acme", "alerts"): "+12125550302",
    ("acme", "news"): "+12125550303",
    ("globex", "deals"): "+12125550311",
    ("globex", "info"): "+12125550312",
    ("globex", "vip"): "+12125550313",
}
CAMPAIGNS = {"acme": ("promo", "alerts", "news"), "globex": ("deals", "info", "vip")}
BODIES = (
    "STOP",
    "START",
    "START",
    "HELP",
    "thanks!",
    "please stop texting me",
    "STOPALL",
    "unstop",
    "YES",
)


class LiveClock:
    """The real clock plus an offset the probe moves: recorded times stay near now."""

    def __init__(self) -> None:
        from datetime import UTC

        self._utc = UTC
        self.offset = timedelta(0)
        self.frozen: datetime | None = None

    @property
    def now(self) -> datetime:
        if self.frozen is not None:
            return self.frozen
        return datetime.now(self._utc) + self.offset

    @now.setter
    def now(self, value: datetime) -> None:
        if self.frozen is not None:
            self.frozen = value
        else:
            self.offset += value - self.now

    def __call__(self) -> datetime:
        return self.now


def policies() -> dict[tuple[str, str], dict[str, Any]]:
    day = Duration(seconds=86400)
    return {
        ("acme", "promo"): dict(daily_cap=2),
        ("acme", "alerts"): dict(purpose=lpb.CAMPAIGN_PURPOSE_INFORMATIONAL),
        ("acme", "news"): dict(
            quiet_hours=lpb.QuietHours(
                start_minute_of_day=9 * 60 + 30, end_minute_of_day=12 * 60 + 30
            ),
            revoke_all=True,
        ),
        ("globex", "deals"): dict(
            frequency_caps=[lpb.FrequencyCap(limit=3, window=Duration(seconds=7 * 86400))]
        ),
        ("globex", "info"): dict(
            purpose=lpb.CAMPAIGN_PURPOSE_INFORMATIONAL, reconfirm_interval=day
        ),
        ("globex", "vip"): dict(daily_cap=1),
    }


def spell(rng: random.Random, phone: str) -> str:
    """``phone`` (+1NXXNXXXXXX) in one of several forms."""
    d = phone[2:]
    return rng.choice(
        [
            phone,
            phone,
            phone,
            phone,
            phone,
            phone,
            phone,
            phone,
            phone,
            f"1{d}",
            f"({d[:3]}) {d[3:6]}-{d[6:]}",
            f"+1 {d[:3]} {d[3:6]} {d[6:]}",
            f"{d[:3]}-{d[3:6]}-{d[6:]}",
        ]
    )


@dataclass
class Side:
    """One ledger's instances and what was written to it."""

    name: str
    writers: list[Client]
    token: ConsistencyToken = field(default_factory=lambda: ConsistencyToken({}))
    outcomes: list[str] = field(default_factory=list)

    def wrote(self, token: str) -> None:
        if token:
            self.token = self.token.merge(ConsistencyToken.decode(token))


async def apply(side: Side, rng: random.Random, op: dict[str, Any]) -> None:
    """Send ``op`` to ``side`` through a writer ``rng`` picks; note its outcome."""
    c = side.writers[rng.randrange(len(side.writers))]
    kind, request = op["kind"], op["request"]
    try:
        if kind == "import":
            (answer,) = await streamed(c, [request])
            side.wrote(answer.consistency_token)
            side.outcomes.append(
                f"import ok={answer.imported} held={answer.held_for_review}"
                f" refused={len(answer.refusals)}"
            )
            return
        if kind == "resolve":
            # Which candidate: the first pending one GetConsent lists on this side.
            consent = await c.GetConsent(
                api.GetConsentRequest(
                    phone=op["phone"],
                    brand=op["brand"],
                    campaign=op["campaign"],
                    at_least_as_fresh=side.token.encode(),
                )
            )
            pending = [p.event for p in consent.pending_revocation_candidates]
            pending = [p for p in pending if p.brand == op["brand"]]
            if not pending:
                side.outcomes.append("resolve none")
                return
            held = pending[0]
            request = api.ResolveRevocationCandidateRequest(
                request_id=request.request_id,
                phone=op["phone"],
                brand=held.brand,
                candidate_event_id=held.event_id,
                resolution=request.resolution,
                occurred_at=request.occurred_at,
                resolved_by="probe",
            )
            kind = "ResolveRevocationCandidate"
        w = await getattr(c, kind)(request)
        side.wrote(w.consistency_token)
        extra = ""
        if kind == "HandleInboundMessage":
            extra = f" {api.InboundIntent.Name(w.intent)} {api.ReplyKind.Name(w.reply)}"
        side.outcomes.append(f"{kind} ok{extra}")
    except grpc.aio.AioRpcError as err:
        info = held_info(err)
        if info is not None:
            side.wrote(info["consistency_token"])
        side.outcomes.append(f"{kind} {err.code().name} held={info is not None}")
        if os.environ.get("PROBE_VERBOSE"):
            print(side.name, kind, op["phone"], err.code().name, (err.details() or "")[:200])


def make_ops(rng: random.Random, phones: list[str], clock: Clock, steps: int) -> list[Any]:
    """The writes, and ("advance", delta) markers moving the clock."""
    ops: list[Any] = []
    for _ in range(steps):
        if rng.random() < 0.04:
            ops.append(("advance", timedelta(minutes=rng.choice([3, 30, 180, 60 * 25]))))
            continue
        phone = rng.choice(phones)
        brand = rng.choice(list(CAMPAIGNS))
        campaign = rng.choice(CAMPAIGNS[brand])
        skew = timedelta(seconds=rng.randint(-240, 240))
        rid = f"p{rng.getrandbits(48):x}"
        spelled = spell(rng, phone)
        r = rng.random()
        op: dict[str, Any] = dict(phone=phone, brand=brand, campaign=campaign, skew=skew)
        if r < 0.22:
            op.update(
                kind="RecordOptIn",
                build=lambda at, s=spelled, b=brand, c=campaign, i=rid: opt_in(
                    s, b, c, at, request_id=i
                ),
            )
        elif r < 0.30:
            op.update(
                kind="RecordOptOut",
                build=lambda at, s=spelled, b=brand, c=campaign, i=rid: opt_out(
                    s, b, c, at, request_id=i
                ),
            )
        elif r < 0.34:
            op.update(
                kind="RecordOptOut",
                build=lambda at, s=spelled, b=brand, i=rid: opt_out(s, b, None, at, request_id=i),
            )
        elif r < 0.50:
            body = rng.choice(BODIES)
            to = SENDERS[(brand, campaign)]
            mid = f"SM{rng.getrandbits(40):x}"
            op.update(
                kind="HandleInboundMessage",
                build=lambda at, s=spelled, t=to, bd=body, i=rid, m=mid: inbound(
                    s, t, bd, at, request_id=i, message_id=m
                ),
            )
        elif r < 0.64:
            mid = f"M{rng.getrandbits(40):x}"
            op.update(
                kind="RecordMessageSent",
                build=lambda at, s=spelled, b=brand, c=campaign, i=rid, m=mid: sent(
                    s, b, c, at, i, message_id=m
                ),
            )
        elif r < 0.72:
            msgs = [
                (
                    spell(rng, rng.choice(phones)),
                    rng.choice(CAMPAIGNS[brand]),
                    f"M{rng.getrandbits(40):x}",
                )
                for _ in range(rng.randint(1, 4))
            ]
            op.update(
                kind="RecordMessagesSent",
                build=lambda at, b=brand, i=rid, ms=msgs: api.RecordMessagesSentRequest(
                    request_id=i,
                    brand=b,
                    messages=[
                        api.SentMessage(
                            phone=p,
                            campaign=c,
                            message_id=m,
                            kind=lpb.MESSAGE_KIND_REGULAR,
                            occurred_at=ts(at),
                            included_opt_out_language=True,
                            identified_sender=True,
                        )
                        for p, c, m in ms
                    ],
                ),
            )
        elif r < 0.84:
            recs = []
            for _ in range(rng.randint(1, 3)):
                p = spell(rng, rng.choice(phones))
                c = rng.choice(CAMPAIGNS[brand])
                back = timedelta(minutes=rng.randint(1, 60 * 48))
                what = rng.random()
                recs.append((what, p, c, back, f"p{rng.getrandbits(48):x}"))

            def build_import(at, b=brand, recs=recs):
                records = []
                for what, p, c, back, i in recs:
                    if what < 0.5:
                        records.append(
                            api.ImportRecord(opt_in=opt_in(p, b, c, at - back, request_id=i))
                        )
                    elif what < 0.8:
                        records.append(
                            api.ImportRecord(opt_out=opt_out(p, b, c, at - back, request_id=i))
                        )
                    elif what < 0.9:
                        records.append(
                            api.ImportRecord(
                                opt_in=opt_in(
                                    p,
                                    b,
                                    c,
                                    at - back,
                                    request_id=i,
                                    tier=lpb.CONSENT_TIER_INFORMATIONAL,
                                )
                            )
                        )
                    else:  # no channel: refused, held for review
                        records.append(
                            api.ImportRecord(
                                opt_out=opt_out(p, b, c, at - back, request_id=i, channel=0)
                            )
                        )
                return api.ImportConsentsRequest(records=records)

            op.update(kind="import", build=build_import)
        elif r < 0.90:
            op.update(
                kind="RecordReconfirmation",
                build=lambda at, s=spelled, b=brand, c=campaign, i=rid: (
                    api.RecordReconfirmationRequest(
                        request_id=i,
                        phone=s,
                        brand=b,
                        campaign=c,
                        channel=lpb.REVOCATION_CHANNEL_API,
                        occurred_at=ts(at),
                    )
                ),
            )
        elif r < 0.91:  # an opt-out refused for no channel: held
            op.update(
                kind="RecordOptOut",
                build=lambda at, s=spelled, b=brand, c=campaign, i=rid: opt_out(
                    s, b, c, at, request_id=i, channel=0
                ),
            )
        else:
            res = rng.choice([lpb.CANDIDATE_RESOLUTION_REVOKED, lpb.CANDIDATE_RESOLUTION_DISMISSED])
            op.update(
                kind="resolve",
                build=lambda at, i=rid, rs=res: api.ResolveRevocationCandidateRequest(
                    request_id=i, resolution=rs, occurred_at=ts(at)
                ),
            )
        ops.append(op)
    return ops


MOMENTS = {
    "now": timedelta(0),
    "at_now": timedelta(0),
    "5m_ago": timedelta(minutes=-5),
    "5m1s_ago": timedelta(minutes=-5, seconds=-1),
    "4m59_ago": timedelta(minutes=-4, seconds=-59),
    "2m_ago": timedelta(minutes=-2),
    "10m_ago": timedelta(minutes=-10),
    "3h_ago": timedelta(hours=-3),
    "26h_ago": timedelta(hours=-26),
    "2h_ahead": timedelta(hours=2),
}


def brief(r: Any) -> tuple[Any, ...]:
    return (r.allowed, api.Reason.Name(r.reason), getattr(r, "provisional", None))


KINDS = [
    lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
    lpb.MESSAGE_KIND_HELP_REPLY,
    lpb.MESSAGE_KIND_RECONFIRMATION_REQUEST,
    lpb.MESSAGE_KIND_CONVERSATION_REPLY,
    lpb.MESSAGE_KIND_OPT_IN_CONFIRMATION,
]


async def readings(c: Client, phones: list[str], clock: Clock, token: str) -> dict[Any, Any]:
    """Every reader's answer, keyed (reader, moment, phone, brand, campaign)."""
    out: dict[Any, Any] = {}
    now = clock.now
    for brand, campaigns in CAMPAIGNS.items():
        for campaign in campaigns:
            for name, delta in MOMENTS.items():
                at = now + delta
                extra = {} if name == "now" else {"at": ts(at)}
                # Each moment as a regular message, and two of them as every other kind.
                kinds: list[tuple[str, dict[str, Any]]] = [(name, {})]
                if name in ("now", "10m_ago"):
                    kinds += [
                        (f"{name}/{lpb.MessageKind.Name(k)}", {"message_kind": k}) for k in KINDS
                    ]
                for key, kind in kinds:
                    batch = await c.CanSendBatch(
                        api.CanSendBatchRequest(
                            brand=brand,
                            campaign=campaign,
                            phones=phones,
                            at_least_as_fresh=token,
                            **extra,
                            **kind,
                        )
                    )
                    for phone, d in zip(phones, batch.decisions, strict=True):
                        seen = (*brief(d)[:2], batch.provisional)
                        out[("batch", key, phone, brand, campaign)] = seen
                for phone in phones:
                    asked = dict(
                        phone=phone, brand=brand, campaign=campaign, at_least_as_fresh=token
                    )
                    for key, kind in kinds:
                        r = await c.CanSend(api.CanSendRequest(**asked, **extra, **kind))
                        out[("cansend", key, phone, brand, campaign)] = brief(r)
                        if delta <= timedelta(0):
                            r = await c.CanSendAsOf(
                                api.CanSendAsOfRequest(**asked, at=ts(at), known_at=ts(now), **kind)
                            )
                            out[("asof", key, phone, brand, campaign)] = brief(r)
                    if name == "now":
                        d = phone[2:]
                        for form in (f"1{d}", f"({d[:3]}) {d[3:6]}-{d[6:]}", f" {phone}"):
                            try:
                                r2 = await c.CanSend(api.CanSendRequest(**dict(asked, phone=form)))
                                out[("spelled", form, phone, brand, campaign)] = brief(r2)
                            except grpc.aio.AioRpcError as err:
                                out[("spelled", form, phone, brand, campaign)] = err.code().name
                        g = await c.GetConsent(api.GetConsentRequest(**asked))
                        out[("consent", name, phone, brand, campaign)] = (
                            api.ConsentState.Name(g.state),
                            len(g.pending_revocation_candidates),
                        )
    return out


_STATE_OF = {
    "REASON_REVOKED": "CONSENT_STATE_REVOKED",
    "REASON_REVOKED_BRAND_WIDE": "CONSENT_STATE_REVOKED_BRAND_WIDE",
    "REASON_REVOCATION_PENDING_REVIEW": "CONSENT_STATE_PENDING_REVIEW",
    "REASON_NO_CONSENT": "CONSENT_STATE_NEVER_GRANTED",
}


def internal_disagreements(
    name: str, got: dict[Any, Any], before_writes: tuple[str, ...] = ()
) -> list[str]:
    """Answers of one instance that must agree. CanSendAsOf's are not compared at
    ``before_writes``, moments before the probe wrote anything (its clock live): asked
    with ``known_at`` now, it counts facts recorded after the moment either way, where
    CanSend about it answers in hindsight (README, "The moment asked about")."""
    bad = []
    for (reader, moment, phone, brand, campaign), said in got.items():
        if reader == "spelled":
            canon = got[("cansend", "now", phone, brand, campaign)]
            if said != "INVALID_ARGUMENT" and said != canon:
                bad.append(
                    f"{name} spelled {moment!r} {(phone, brand, campaign)}: {said} vs {canon}"
                )
            continue
        if reader != "cansend":
            continue
        where = (moment, phone, brand, campaign)
        b = got.get(("batch", moment, phone, brand, campaign))
        if b != said:
            bad.append(f"{name} cansend!=batch {where}: {said} vs {b}")
        a = got.get(("asof", moment, phone, brand, campaign))
        if (
            a is not None
            and not moment.startswith(("2m_ago", "4m59_ago", "5m_ago", *before_writes))
            and a[:2] != said[:2]
        ):
            bad.append(f"{name} cansend!=asof {where}: {said} vs {a}")
        if moment == "now":
            state, pending = got[("consent", moment, phone, brand, campaign)]
            if said[1] in _STATE_OF and not pending and state != _STATE_OF[said[1]]:
                bad.append(f"{name} cansend vs consent {where}: {said} vs {state}")
            if said[0] and state != "CONSENT_STATE_ACTIVE":
                bad.append(f"{name} ALLOWED but consent {state} {where}")
    return bad


def cross(name_a: str, a: dict[Any, Any], name_b: str, b: dict[Any, Any]) -> list[str]:
    return [f"{name_a}!={name_b} {k}: {a[k]} vs {b.get(k)}" for k in sorted(a) if a[k] != b.get(k)]


async def test_probe(tmp_path, postgres_dsn, postgres_server, kafka_bootstrap) -> None:
    seed = int(os.environ.get("PROBE_SEED", "1"))
    steps = int(os.environ.get("PROBE_STEPS", "120"))
    nphones = int(os.environ.get("PROBE_PHONES", "20"))
    rng = random.Random(seed)
    # Far enough ahead that "26h_ago" is after all the probe records (LOOK_BACK is a day).
    ahead = Clock(noon_in_los_angeles(ahead=timedelta(days=2)))
    clock: Any = LiveClock() if os.environ.get("PROBE_LIVE") else ahead
    before_writes = ("3h_ago", "26h_ago") if os.environ.get("PROBE_LIVE") else ()
    start = clock.now
    phones = [
        f"+1{rng.choice(['415', '212', '305', '512', '617'])}555{1000 + i:04d}"
        for i in range(nphones)
    ]
    defs = [
        define(b, c, start - timedelta(days=60), [SENDERS[(b, c)]], **p)
        for (b, c), p in policies().items()
    ]
    kafka = kafka_settings(kafka_bootstrap, f"probe-{uuid.uuid4().hex[:8]}.")
    (tmp_path / "k").mkdir()
    (tmp_path / "e").mkdir()
    no_kafka = bool(os.environ.get("PROBE_NO_KAFKA"))
    ks = service_settings(tmp_path / "k", postgres_dsn, kafka=None if no_kafka else kafka)
    ename = f"probe_e_{uuid.uuid4().hex[:8]}"
    edsn = await postgres_server.create_database(ename)
    (tmp_path / "k2").mkdir()
    es = service_settings(tmp_path / "e", edsn, kafka=None)
    report: list[str] = []
    async with (
        running(ks, clock) as ra,
        running(replace(ks, data_dir=tmp_path / "k2"), clock) as rb,
        running(es, clock) as re_,
    ):
        await defined(ra, defs)
        await defined(re_, defs)
        async with client(ra.address) as a, client(rb.address) as b, client(re_.address) as e:
            # SetBrandPolicy revoke_all for globex.
            for c in (a, e):
                await c.SetBrandPolicy(
                    api.SetBrandPolicyRequest(
                        request_id="bp-globex", brand="globex", revoke_all=True
                    )
                )
            k_side, e_side = Side("kafka", [a, b]), Side("embedded", [e])
            ops = make_ops(rng, phones, clock, steps)
            chunks = int(os.environ.get("PROBE_ROUNDS", "3"))
            size = -(-len(ops) // chunks)
            for round_ in range(chunks):
                for op in ops[round_ * size : (round_ + 1) * size]:
                    if isinstance(op, tuple):
                        clock.now += op[1]
                        continue
                    at = clock.now + op["skew"]
                    op_now = dict(op, request=op["build"](at))
                    pick = random.Random(rng.random())
                    await apply(k_side, pick, op_now)
                    await apply(e_side, random.Random(0), op_now)
                    if k_side.outcomes[-1] != e_side.outcomes[-1]:
                        report.append(
                            f"write outcome differs: {op['kind']} {op['phone']}"
                            f" {op['brand']}/{op['campaign']}:"
                            f" {k_side.outcomes[-1]} vs {e_side.outcomes[-1]}"
                        )
                if round_ == chunks - 1:
                    # Let any fact stamped ahead become past.
                    clock.now += timedelta(minutes=6)
                tag = f"r{round_}"
                if isinstance(clock, LiveClock):
                    clock.frozen = clock.now + timedelta(minutes=10)
                got_a = await readings(a, phones, clock, k_side.token.encode())
                got_b = await readings(b, phones, clock, k_side.token.encode())
                got_e = await readings(e, phones, clock, e_side.token.encode())
                report += internal_disagreements(f"{tag} A", got_a, before_writes)
                report += internal_disagreements(f"{tag} E", got_e, before_writes)
                report += cross(f"{tag} A", got_a, "B", got_b)
                report += cross(f"{tag} A", got_a, "E", got_e)
                print(tag, Counter(v for k, v in got_a.items() if k[0] == "cansend").most_common())
                print(tag, "disagreements so far:", len(report))
                for line in report[:30]:
                    print("  ", line)
                if isinstance(clock, LiveClock):
                    clock.offset = clock.frozen - datetime.now(clock._utc)
                    clock.frozen = None
            print(Counter(k_side.outcomes).most_common())
    # Restart A, then rebuild, on the same ledger and view.
    if isinstance(clock, LiveClock):
        clock.frozen = clock.now + timedelta(minutes=10)
    async with running(ks, clock) as ra2, client(ra2.address) as a2:
        got_r = await readings(a2, phones, clock, k_side.token.encode())
        report += cross("A", got_a, "A-restarted", got_r)
        env = {
            **os.environ,
            "CONSENT_LEDGER": "postgres" if no_kafka else "kafka",
            "CONSENT_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CONSENT_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "CONSENT_KAFKA_PARTITIONS": "4",
            "CONSENT_KAFKA_REPLICATION_FACTOR": "1",
            "CONSENT_KAFKA_MIN_INSYNC_REPLICAS": "1",
            "CONSENT_POSTGRES_DSN": postgres_dsn,
            "CONSENT_AUTH_TOKENS_FILE": str(write_tokens(tmp_path / "tokens.json")),
            "CONSENT_DATA_DIR": str(tmp_path / "data"),
        }
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli", "rebuild", "--quiet"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        await asyncio.sleep(2)
        got_rb = await readings(a2, phones, clock, k_side.token.encode())
        report += cross("A", got_a, "A-rebuilt", got_rb)
    await postgres_server.drop_database(ename)
    print(f"seed {seed}: {len(report)} disagreements")
    kinds = Counter(" ".join(x.split()[:3]) for x in report)
    print(kinds.most_common())
    for line in report[:60]:
        print(line)
    assert not report
