"""Every reader of a number's consent says what CanSend says, through the real gRPC
server on the real Kafka ledger and PostgreSQL, over generated histories of opt-ins,
opt-outs, holds (replies flagged for review, opt-outs refused and held, opt-outs no
defined campaign could take, STOPs to a number no campaign sends from), their
resolutions, and days passing until holds are overdue: CanSend, CanSendBatch,
CanSendAsOf, GetConsent, the proof packet and the stored ``consent_status`` rows."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf import json_format

from ledger.ports import ConsistencyToken
from tests.e2e.harness import Client, Clock, client, define, held_info, inbound, opt_in, opt_out, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENDER = "+12125550184"
"""The number acme's "promo" sends from: a reply to it is a reply to promo."""
UNOWNED = "+12125550198"
"""A number no campaign sends from: a STOP to it is held under every brand ("*")."""
CAMPAIGNS = ("promo", "alerts")
OPS = ("opt_in", "stop", "stop_all", "undefined", "unowned", "reply", "refused", "resolve")

_STATE_OF = {
    api.REASON_REVOKED: api.CONSENT_STATE_REVOKED,
    api.REASON_REVOKED_BRAND_WIDE: api.CONSENT_STATE_REVOKED_BRAND_WIDE,
    api.REASON_REVOCATION_PENDING_REVIEW: api.CONSENT_STATE_PENDING_REVIEW,
    api.REASON_NO_CONSENT: api.CONSENT_STATE_NEVER_GRANTED,
}
"""GetConsent's state for CanSend's answer (one overdue is decided apart); any other
answer (allowed, quiet hours, ...) comes after the consent was found active."""
_HOLDS = {
    api.REASON_REVOCATION_PENDING_REVIEW,
    api.REASON_REVOCATION_OVERDUE,
    api.REASON_REVOKED_BRAND_WIDE,
}
"""What CanSend answers while a hold awaits review: nothing else may come first."""


@dataclass
class History:
    """What the test wrote, to ask about it at least as fresh."""

    clock: Clock
    tokens: dict[str, ConsistencyToken] = field(default_factory=dict)
    last: datetime | None = None

    def moment(self) -> datetime:
        """The time of the next fact: within the last hour, after every one before."""
        earliest = self.clock.now - timedelta(hours=1)
        self.last = (
            earliest if self.last is None else max(earliest, self.last + timedelta(seconds=1))
        )
        return self.last

    def wrote(self, phone: str, token: str) -> None:
        decoded = ConsistencyToken.decode(token)
        known = self.tokens.get(phone)
        self.tokens[phone] = decoded if known is None else known.merge(decoded)

    def token(self, phone: str | None = None) -> str:
        if phone is not None:
            return self.tokens[phone].encode()
        merged = ConsistencyToken({})
        for token in self.tokens.values():
            merged = merged.merge(token)
        return merged.encode()


async def _step(admin: Client, rng: random.Random, phone: str, history: History) -> str:
    """One fact about ``phone``, of a kind ``rng`` picks; the kind."""
    op = rng.choice(OPS)
    at = history.moment()
    campaign = rng.choice(CAMPAIGNS)
    if op == "opt_in":
        w = await admin.RecordOptIn(opt_in(phone, "acme", campaign, at))
    elif op == "stop":
        w = await admin.RecordOptOut(opt_out(phone, "acme", campaign, at))
    elif op == "stop_all":
        w = await admin.RecordOptOut(opt_out(phone, "acme", None, at))
    elif op == "undefined":  # held, unattributed, under acme
        w = await admin.RecordOptOut(opt_out(phone, "acme", "winter-sale", at, text="stop it"))
    elif op == "unowned":  # held, unattributed, under every brand
        w = await admin.HandleInboundMessage(inbound(phone, UNOWNED, "STOP", at))
    elif op == "reply":  # flagged for review, under acme
        w = await admin.HandleInboundMessage(inbound(phone, SENDER, "please stop texting me", at))
    elif op == "refused":  # no channel: refused, and held under acme
        try:
            await admin.RecordOptOut(opt_out(phone, "acme", campaign, at, channel=0))
        except grpc.aio.AioRpcError as err:
            info = held_info(err)
            assert info is not None, err
            history.wrote(phone, info["consistency_token"])
            return op
        raise AssertionError("an opt-out with no channel was recorded")
    else:
        consent = await admin.GetConsent(
            api.GetConsentRequest(
                phone=phone, brand="acme", campaign="promo", at_least_as_fresh=history.token(phone)
            )
        )
        if not consent.pending_revocation_candidates:
            return "nothing to resolve"
        held = rng.choice(list(consent.pending_revocation_candidates)).event
        # "Revoked" under "*" would revoke no brand: such a STOP is only dismissed.
        revoked = held.brand != "*" and rng.random() < 0.5
        w = await admin.ResolveRevocationCandidate(
            api.ResolveRevocationCandidateRequest(
                request_id=uuid.uuid4().hex,
                phone=phone,
                brand=held.brand,
                candidate_event_id=held.event_id,
                resolution=(
                    lpb.CANDIDATE_RESOLUTION_REVOKED
                    if revoked
                    else lpb.CANDIDATE_RESOLUTION_DISMISSED
                ),
                occurred_at=ts(at),
            )
        )
    history.wrote(phone, w.consistency_token)
    return op


async def _stored(dsn: str, phones: list[str]) -> dict[tuple[str, str], str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT phone, campaign, status FROM consent_status"
            " WHERE brand = 'acme' AND phone = ANY($1::text[])",
            phones,
        )
    finally:
        await conn.close()
    return {(r["phone"], r["campaign"]): r["status"] for r in rows}


async def _readers_agree(
    admin: Client, phones: list[str], history: History, dsn: str, seen: Counter[str]
) -> None:
    """Ask every reader about every number and campaign now, and hold them to what
    CanSend answers."""
    now = history.clock.now
    for campaign in CAMPAIGNS:
        batch = await admin.CanSendBatch(
            api.CanSendBatchRequest(
                brand="acme", campaign=campaign, phones=phones, at_least_as_fresh=history.token()
            )
        )
        # Read once the view has applied every write (the batch waited for that).
        stored = await _stored(dsn, phones)
        for phone, in_batch in zip(phones, batch.decisions, strict=True):
            asked: dict[str, Any] = dict(
                phone=phone, brand="acme", campaign=campaign, at_least_as_fresh=history.token(phone)
            )
            where = (phone, campaign)
            answer = await admin.CanSend(api.CanSendRequest(**asked))
            said = (answer.allowed, answer.reason, list(answer.evidence_event_ids))
            batched = (in_batch.allowed, in_batch.reason, list(in_batch.evidence_event_ids))
            assert batched == said, where
            then = await admin.CanSendAsOf(api.CanSendAsOfRequest(**asked, at=ts(now)))
            assert (then.allowed, then.reason, list(then.evidence_event_ids)) == said, where

            consent = await admin.GetConsent(api.GetConsentRequest(**asked))
            pending = [c.event for c in consent.pending_revocation_candidates]
            ids = [e.event_id for e in pending]
            deadlines = list(consent.pending_deadlines)
            assert [d.candidate_event_id for d in deadlines] == ids, where
            overdue = {d.candidate_event_id for d in deadlines if d.overdue}
            unattributed = {
                e.event_id for e in pending if e.revocation_candidate_flagged.unattributed
            }
            evidence = set(answer.evidence_event_ids)
            if pending:
                assert answer.reason in _HOLDS, (where, answer)
            if answer.reason == api.REASON_REVOCATION_OVERDUE:
                # Counted as a revocation past its deadline; the state says what the
                # holds are, the deadlines that they are overdue.
                assert evidence == overdue, (where, answer, consent)
                expected = (
                    api.CONSENT_STATE_REVOKED_BRAND_WIDE
                    if unattributed
                    else api.CONSENT_STATE_PENDING_REVIEW
                )
            else:
                assert not overdue, (where, answer, consent)
                expected = _STATE_OF.get(answer.reason, api.CONSENT_STATE_ACTIVE)
            if answer.reason == api.REASON_REVOKED_BRAND_WIDE and pending:
                assert evidence == unattributed, (where, answer, consent)
            if answer.reason == api.REASON_REVOCATION_PENDING_REVIEW:
                assert evidence == set(ids) and not unattributed, (where, answer, consent)
            assert consent.state == expected, (where, answer, consent)
            seen[api.ConsentState.Name(consent.state) + (" held" if pending else "")] += 1
            seen["overdue"] += bool(overdue)

            packet = await admin.GetProofPacket(api.GetProofPacketRequest(**asked))
            lines = json_format.MessageToDict(packet.packet, preserving_proto_field_name=True)
            holds = {
                line["event"]["event_id"]: line
                for line in lines.get("opt_outs", [])
                if line["kind"] != "revocation" and not line.get("resolution")
            }
            assert set(holds) == set(ids), (where, holds, consent)
            for held_id, line in holds.items():
                assert bool(line.get("overdue")) is (held_id in overdue), (where, line)
                if held_id in unattributed and held_id not in overdue:
                    assert "counts as an opt-out of every campaign" in line["handling"], line

            # The stored rows say a hold awaits review while one does (every phone
            # opted in to each campaign, so each has its row); without one they say
            # what GetConsent says.
            row = stored.get(where)
            if pending:
                assert row == "pending_review", (where, row, consent)
            else:
                assert (
                    row
                    == {
                        api.CONSENT_STATE_ACTIVE: "active",
                        api.CONSENT_STATE_REVOKED: "revoked",
                        api.CONSENT_STATE_REVOKED_BRAND_WIDE: "revoked",
                        api.CONSENT_STATE_NEVER_GRANTED: None,
                    }[consent.state]
                ), (where, row, consent)


@pytest.mark.parametrize("seed", [1, 2])
async def test_every_reader_of_consent_says_what_cansend_says_of_holds(
    serve, postgres_dsn, seed: int
):
    """An opt-out no defined campaign could take counts for every campaign until it is
    resolved: CanSend answered REVOKED_BRAND_WIDE while GetConsent said PENDING_REVIEW
    and the packet that it only blocked sends, as of a reply awaiting review."""
    rng = random.Random(seed)
    clock = Clock()
    start = clock.now
    campaigns = [
        define("acme", "promo", start - timedelta(days=60), [SENDER]),
        define("acme", "alerts", start - timedelta(days=60)),
    ]
    runtime = await serve(name="readers", clock=clock, campaigns=campaigns)
    phones = [f"+1415557{3300 + 10 * seed + i:04d}" for i in range(6)]
    history = History(clock)
    seen: Counter[str] = Counter()
    async with client(runtime.address) as admin:
        for phone in phones:
            for campaign in CAMPAIGNS:
                w = await admin.RecordOptIn(
                    opt_in(phone, "acme", campaign, start - timedelta(days=1))
                )
                history.wrote(phone, w.consistency_token)
        # Days pass between rounds: fifteen make the holds of the rounds before
        # overdue (ten business days), all of them fall short of the day the
        # revoke-all rule takes effect (the stored rows do not apply it).
        for days in (0, 1, 15, 0, 3, 15):
            clock.now += timedelta(days=days)
            for phone in phones:
                if rng.random() < 0.7:
                    await _step(admin, rng, phone, history)
            await _readers_agree(admin, phones, history, postgres_dsn, seen)
    # The histories reach the cases the test is for.
    assert seen["CONSENT_STATE_REVOKED_BRAND_WIDE held"] and seen["overdue"], seen
