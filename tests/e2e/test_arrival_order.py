"""A number's facts, each at its own time, delivered in every order of arrival
through mixed write paths (``RecordOptIn``/``RecordOptOut``, ``ImportConsents`` a
record a call, several records in one message or in one stream of messages, a
text through ``HandleInboundMessage``, ``RecordMessageSent`` and
``RecordMessagesSent``), each order on a number of its own, on the embedded default:
every order must give the answers the README gives for the facts by their own
times (CanSend now for each campaign and reply kind, CanSendAsOf between the facts
as known now, GetConsent), never by the order they came in. The few orders the
README lets matter are kept out: nothing here is stamped ahead of the service's
clock, and the opt-outs are all written or all imported within a history, since an
imported opt-out owes no confirmation from here.

A small, chosen set (the full probe took every history in every order through the
CLI too, on Kafka and after a rebuild: ``probe_arrival_order.py``)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.duration_pb2 import Duration

from ledger.ports import ConsistencyToken
from tests.e2e.harness import (
    Client,
    client,
    define,
    inbound,
    module_clock,
    opt_in,
    opt_out,
    sent,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROMO_FROM, NEWS_FROM, CAPPED_FROM = "+12125558801", "+12125558802", "+12125558803"
BRIEF_FROM, SHIFTING_FROM = "+12125558804", "+12125558805"
WIDENING_FROM, ALL_FROM = "+12125558806", "+12125558807"
MINUTE = timedelta(minutes=1)
CLOCK = module_clock()
CAP = lpb.FrequencyCap(limit=1, window=Duration(seconds=86400))
CAP_OF_THREE = lpb.FrequencyCap(limit=3, window=Duration(seconds=86400))
REPLIES = {
    "help": lpb.MESSAGE_KIND_HELP_REPLY,
    "stop": lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
    "start": lpb.MESSAGE_KIND_OPT_IN_CONFIRMATION,
}
NUMBERS = {"capped": CAPPED_FROM, "brief": BRIEF_FROM, "promo": PROMO_FROM}

Fact = tuple[str, timedelta]
"""What happened (``in:<campaign>``, ``out:<campaign>`` or ``out:all``, a text
``STOP``/``START``/``HELP`` to promo's number, or ``HELP:capped`` to capped's (or
brief's), ``confirmation``: an opt-out's confirmation sent for promo,
``reply:help:capped``: a help reply sent for capped (or brief), ``reply:start:promo``
a START's confirmation for promo), and how long before the service's now."""

HISTORIES: dict[str, tuple[list[Fact], str]] = {
    # An opt-out between two opt-ins, then one of every campaign: by their own
    # times the last stands, whichever came first.
    "opt-ins and opt-outs": (
        [
            ("in:promo", 4 * 60 * MINUTE),
            ("out:promo", 3 * 60 * MINUTE),
            ("in:news", 2 * 60 * MINUTE),
            ("out:all", 60 * MINUTE),
        ],
        "write",
    ),
    # The same, imported: one record a call, in one message, or one a message of a
    # stream.
    "imported": (
        [
            ("in:promo", 4 * 60 * MINUTE),
            ("out:promo", 3 * 60 * MINUTE),
            ("in:promo", 2 * 60 * MINUTE),
            ("out:all", 60 * MINUTE),
        ],
        "import",
    ),
    # A STOP and a START a gateway passed on in either order.
    "STOP and START": (
        [("in:promo", 60 * MINUTE), ("STOP", 6 * MINUTE), ("START", 3 * MINUTE)],
        "write",
    ),
    # An opt-out's confirmation the sender recorded before the STOP it answered
    # reached the ledger: it is answered all the same, and no second one is allowed.
    "a STOP confirmed": (
        [("in:promo", 60 * MINUTE), ("STOP", 4 * MINUTE), ("confirmation", 3 * MINUTE)],
        "write",
    ),
    # An opt-in and an opt-out of the same instant: the opt-out wins.
    "at one instant": ([("in:promo", 60 * MINUTE), ("out:promo", 60 * MINUTE)], "write"),
    # A help reply the gateway recorded before the HELP it answered reached the
    # ledger: it answers it all the same, and counts towards no cap.
    "a HELP answered": (
        [
            ("in:capped", 60 * MINUTE),
            ("HELP:capped", 4 * MINUTE),
            ("reply:help:capped", 3 * MINUTE),
        ],
        "write",
    ),
    # brief's reply window is 2 minutes, shorter than the longest (5): a help reply
    # recorded before its HELP answers it when sent inside brief's window only, as
    # in the facts' own order; sent outside it, it counts whatever the order.
    "a HELP answered in a short window": (
        [("in:brief", 60 * MINUTE), ("HELP:brief", 4 * MINUTE), ("reply:help:brief", 3 * MINUTE)],
        "write",
    ),
    # An opt-out's confirmation recorded before the STOP it confirmed, and an opt-in
    # again: it confirmed it all the same, and fills no cap of the new consent.
    "a STOP confirmed first": (
        [
            ("in:capped", 60 * MINUTE),
            ("STOP:capped", 6 * MINUTE),
            ("reply:stop:capped", 5 * MINUTE),
            ("in:capped", 2 * MINUTE),
        ],
        "write",
    ),
    # A START's confirmation (opt-out language in it) recorded before the opt-in the
    # START resumed: in the facts' own order it was the START's answer, which meets
    # no first message's obligation, so the next send owes the opt-out language.
    "a START confirmed before its opt-in": (
        [
            ("in:promo", 60 * MINUTE),
            ("STOP", 8 * MINUTE),
            ("START", 5 * MINUTE),
            ("reply:start:promo", 4 * MINUTE),
        ],
        "write",
    ),
    "a HELP answered too late": (
        [("in:brief", 60 * MINUTE), ("HELP:brief", 6 * MINUTE), ("reply:help:brief", 3 * MINUTE)],
        "write",
    ),
}

EXPECTED: dict[str, dict[str, Any]] = {
    "opt-ins and opt-outs": {
        "promo now": "REASON_REVOKED_BRAND_WIDE",
        "news now": "REASON_REVOKED_BRAND_WIDE",
        "promo as of 0": "REASON_NO_CONSENT",
        "promo as of 1": "REASON_CONSENT_ACTIVE",
        "promo as of 2": "REASON_REVOKED",
        "promo as of 3": "REASON_REVOKED",
        "news as of 3": "REASON_CONSENT_ACTIVE",
        "news as of 4": "REASON_REVOKED_BRAND_WIDE",
        "promo consent": "CONSENT_STATE_REVOKED_BRAND_WIDE",
        "news consent": "CONSENT_STATE_REVOKED_BRAND_WIDE",
    },
    "imported": {
        "promo now": "REASON_REVOKED_BRAND_WIDE",
        "promo as of 1": "REASON_CONSENT_ACTIVE",
        "promo as of 2": "REASON_REVOKED",
        "promo as of 3": "REASON_CONSENT_ACTIVE",
        "promo as of 4": "REASON_REVOKED_BRAND_WIDE",
        "promo consent": "CONSENT_STATE_REVOKED_BRAND_WIDE",
    },
    "STOP and START": {
        "promo now": "REASON_CONSENT_ACTIVE",
        "promo as of 1": "REASON_CONSENT_ACTIVE",
        "promo as of 2": "REASON_REVOKED",
        "promo as of 3": "REASON_CONSENT_ACTIVE",
        "promo consent": "CONSENT_STATE_ACTIVE",
    },
    "a STOP confirmed": {
        "promo now": "REASON_REVOKED",
        "promo now confirmation": "REASON_OPT_OUT_CONFIRMATION_NOT_ALLOWED",
        "promo as of 1": "REASON_CONSENT_ACTIVE",
        "promo as of 2": "REASON_REVOKED",
        "promo consent": "CONSENT_STATE_REVOKED",
    },
    "at one instant": {
        "promo now": "REASON_REVOKED",
        "promo as of 1": "REASON_REVOKED",
        "promo consent": "CONSENT_STATE_REVOKED",
    },
    "a HELP answered": {
        "capped now": "REASON_CONSENT_ACTIVE",
        "capped now help": "REASON_REPLY_NOT_OWED",
        "capped as of 3": "REASON_CONSENT_ACTIVE",
        "capped consent": "CONSENT_STATE_ACTIVE",
    },
    "a HELP answered in a short window": {
        "brief now": "REASON_CONSENT_ACTIVE",
        "brief now help": "REASON_REPLY_NOT_OWED",
    },
    "a STOP confirmed first": {
        "capped now": "REASON_CONSENT_ACTIVE",
        "capped now confirmation": "REASON_OPT_OUT_CONFIRMATION_NOT_ALLOWED",
        "capped consent": "CONSENT_STATE_ACTIVE",
    },
    "a START confirmed before its opt-in": {
        "promo now": "REASON_CONSENT_ACTIVE",
        "promo now language": "required",
    },
    "a HELP answered too late": {
        "brief now": "REASON_FREQUENCY_CAP_REACHED",
        "brief now help": "REASON_REPLY_NOT_OWED",
    },
}
"""Each history's answers by its facts' own times (``as of i``: between the facts
i-1 and i in time, 0 before the first), as the README gives them."""


@pytest.fixture(scope="module")
async def service(module_serve):
    start = CLOCK.now - timedelta(days=30)
    return await module_serve(
        on_kafka=False,
        name="arrival",
        clock=CLOCK,
        campaigns=[
            define("acme", "promo", start, [PROMO_FROM]),
            define("acme", "news", start, [NEWS_FROM]),
            define("acme", "capped", start, [CAPPED_FROM], frequency_caps=[CAP]),
            define(
                "acme",
                "brief",
                start,
                [BRIEF_FROM],
                frequency_caps=[CAP],
                opt_out_confirmation_window=Duration(seconds=120),
            ),
            define(
                "acme",
                "shifting",
                start,
                [SHIFTING_FROM],
                frequency_caps=[CAP],
                opt_out_confirmation_window=Duration(seconds=120),
            ),
            define(
                "acme",
                "widening",
                start,
                [WIDENING_FROM],
                frequency_caps=[CAP_OF_THREE],
                opt_out_confirmation_window=Duration(seconds=120),
                conversation_window=Duration(seconds=120),
            ),
            define("acme", "all", start, [ALL_FROM], frequency_caps=[CAP], revoke_all=True),
        ],
    )


class Writes:
    """acme's app writing, and the freshest token it was given."""

    def __init__(self, c: Client) -> None:
        self.c = c
        self.token = ConsistencyToken({})

    def wrote(self, answer: Any) -> None:
        assert not getattr(answer, "refusals", None), answer
        self.token = self.token.merge(ConsistencyToken.decode(answer.consistency_token))

    async def import_(self, messages: Sequence[Sequence[api.ImportRecord]]) -> None:
        async def stream() -> AsyncIterator[api.ImportConsentsRequest]:
            for records in messages:
                yield api.ImportConsentsRequest(records=records)

        answers = self.c.stub.ImportConsents(
            stream(), metadata=[("authorization", f"Bearer {self.c.token}")], timeout=60
        )
        async for answer in answers:
            self.wrote(answer)


def record(phone: str, fact: Fact) -> api.ImportRecord:
    what, at = fact[0].split(":"), CLOCK.now - fact[1]
    if what[0] == "in":
        return api.ImportRecord(opt_in=opt_in(phone, "acme", what[1], at))
    campaign = None if what[1] == "all" else what[1]
    keyword = lpb.REVOCATION_CHANNEL_KEYWORD
    request = opt_out(phone, "acme", campaign, at, channel=keyword, text="STOP")
    return api.ImportRecord(opt_out=request)


async def deliver(w: Writes, phone: str, facts: list[Fact], style: str, turn: int) -> None:
    """``facts`` in the order given; ``style`` import: records one a call, all in one
    message or one a message of one stream, by ``turn``; sends by one call or batched."""
    if style == "import" and turn % 3:
        records = [record(phone, f) for f in facts]
        await w.import_([records] if turn % 3 == 1 else [[r] for r in records])
        return
    for i, fact in enumerate(facts):
        what, at = fact[0], CLOCK.now - fact[1]
        if what.split(":")[0] in ("STOP", "START", "HELP"):
            to = NUMBERS.get(what.split(":")[-1], PROMO_FROM)
            w.wrote(await w.c.HandleInboundMessage(inbound(phone, to, what.split(":")[0], at)))
        elif what.startswith("reply:"):
            _, reply, campaign = what.split(":")
            kind = REPLIES[reply]
            message = sent(phone, "acme", campaign, at, kind=kind, from_number=NUMBERS[campaign])
            w.wrote(await w.c.RecordMessageSent(message))
        elif what == "confirmation":
            kind = lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION
            message = sent(phone, "acme", "promo", at, kind=kind, from_number=PROMO_FROM)
            if (turn + i) % 2:
                w.wrote(await w.c.RecordMessageSent(message))
            else:
                keep = ("phone", "campaign", "message_id", "kind", "occurred_at", "from_number")
                one = api.SentMessage(**{k: getattr(message, k) for k in keep})
                one.included_opt_out_language = one.identified_sender = True
                w.wrote(
                    await w.c.RecordMessagesSent(
                        api.RecordMessagesSentRequest(
                            request_id=uuid.uuid4().hex, brand="acme", messages=[one]
                        )
                    )
                )
        elif style == "import":
            await w.import_([[record(phone, fact)]])
        elif what.startswith("in:"):
            w.wrote(await w.c.RecordOptIn(record(phone, fact).opt_in))
        else:
            w.wrote(await w.c.RecordOptOut(record(phone, fact).opt_out))


async def answers(
    c: Client, token: str, phone: str, facts: list[Fact], asked: Sequence[str]
) -> dict[str, str]:
    """The answers ``asked`` (``EXPECTED``'s keys) for ``phone``."""
    said: dict[str, str] = {}
    times = sorted({CLOCK.now - f[1] for f in facts})
    moments = [times[0] - MINUTE, *(a + (b - a) / 2 for a, b in itertools.pairwise(times))]
    moments.append(times[-1] + MINUTE)
    for key in asked:
        campaign, question = key.split(" ", 1)
        ask = dict(phone=phone, brand="acme", campaign=campaign, at_least_as_fresh=token)
        if question.startswith("now"):
            kind = lpb.MESSAGE_KIND_REGULAR
            if question.endswith("confirmation"):
                kind = lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION
            elif question.endswith("help"):
                kind = lpb.MESSAGE_KIND_HELP_REPLY
            now = await c.CanSend(api.CanSendRequest(**ask, message_kind=kind))
            said[key] = api.Reason.Name(now.reason)
            if question.endswith("language"):  # whether the opt-out language is owed
                owed = api.OBLIGATION_INCLUDE_OPT_OUT_LANGUAGE in now.obligations
                said[key] = "required" if owed else "omitted"
        elif question.startswith("as of"):
            at = moments[int(question.rsplit(" ", 1)[1])]
            then = await c.CanSendAsOf(
                api.CanSendAsOfRequest(**ask, at=ts(at), known_at=ts(CLOCK.now))
            )
            said[key] = api.Reason.Name(then.reason)
        else:
            consent = await c.GetConsent(api.GetConsentRequest(**ask))
            said[key] = api.ConsentState.Name(consent.state)
    return said


async def exchanges(
    w: Writes, campaign: str, number: str, histories: dict[str, list[Fact]], phones: dict
) -> None:
    """Each history's facts written in the order listed, on its own phone: "in" an
    opt-in of ``campaign``, "reply:<kind>" a reply from ``number`` (with the opt-out
    language), anything else a text to ``number``."""
    for name, facts in histories.items():
        for what, ago in facts:
            phone, at = phones[name], CLOCK.now - ago
            if what == "in":
                w.wrote(await w.c.RecordOptIn(opt_in(phone, "acme", campaign, at)))
            elif what.startswith("reply:"):
                kind = {**REPLIES, "talk": lpb.MESSAGE_KIND_CONVERSATION_REPLY}[what.split(":")[1]]
                message = sent(phone, "acme", campaign, at, kind=kind, from_number=number)
                w.wrote(await w.c.RecordMessageSent(message))
            else:
                w.wrote(await w.c.HandleInboundMessage(inbound(phone, number, what, at)))


async def both_answers(
    admin: Client, w: Writes, campaign: str, phones: dict[str, str]
) -> dict[str, tuple[Any, Any]]:
    """Each phone's CanSend for a regular message of ``campaign``, and its entry of one
    CanSendBatch of them all, as fresh as ``w``'s writes."""
    ask = dict(brand="acme", campaign=campaign, at_least_as_fresh=w.token.encode())
    batch = await admin.CanSendBatch(api.CanSendBatchRequest(phones=list(phones.values()), **ask))
    found = {}
    for (name, phone), together in zip(phones.items(), batch.decisions, strict=True):
        found[name] = (await admin.CanSend(api.CanSendRequest(phone=phone, **ask)), together)
    return found


async def windows_dated_back(
    admin: Client, campaign: str, number: str, cap: lpb.FrequencyCap, seconds: int
) -> None:
    """A change of ``campaign``'s rules dated 30 minutes back: its reply and conversation
    windows ``seconds`` long, its cap ``cap``."""
    policy = lpb.CampaignPolicy(
        sender_numbers=[number],
        frequency_caps=[cap],
        opt_out_confirmation_window=Duration(seconds=seconds),
        conversation_window=Duration(seconds=seconds),
    )
    await admin.ChangeCampaignPolicy(
        api.ChangeCampaignPolicyRequest(
            request_id=uuid.uuid4().hex,
            brand="acme",
            campaign=campaign,
            policy=policy,
            occurred_at=ts(CLOCK.now - 30 * MINUTE),
        )
    )


@pytest.mark.parametrize("history", list(HISTORIES))
async def test_every_order_of_arrival_gives_the_answers_of_the_facts_own_times(history, service):
    facts, style = HISTORIES[history]
    orders = list(itertools.permutations(facts))
    first = 100 * list(HISTORIES).index(history)
    phones = [f"+1415559{first + i:04d}" for i in range(len(orders))]
    async with client(service.address, "acme-app") as app, client(service.address) as auditor:
        w = Writes(app)
        for turn, (phone, order) in enumerate(zip(phones, orders, strict=True)):
            await deliver(w, phone, list(order), style, turn)
        wrong = []
        for phone, order in zip(phones, orders, strict=True):
            said = await answers(auditor, w.token.encode(), phone, facts, list(EXPECTED[history]))
            for key, expected in EXPECTED[history].items():
                if said[key] != expected:
                    wrong.append(f"{[f[0] for f in order]}: {key} {said[key]}, not {expected}")
    assert not wrong, "\n".join(wrong)


SHIFTING: dict[str, list[Fact]] = {
    "HELP": [("in", 60 * MINUTE), ("HELP", 10 * MINUTE), ("reply:help", 9 * MINUTE)],
    "STOP": [
        ("in", 60 * MINUTE),
        ("STOP", 10 * MINUTE),
        ("reply:stop", 9 * MINUTE),
        ("in", 5 * MINUTE),
    ],
    "START": [
        ("in", 60 * MINUTE),
        ("STOP", 12 * MINUTE),
        ("START", 10 * MINUTE),
        ("reply:start", 9 * MINUTE),
    ],
    "conversation": [("in", 60 * MINUTE), ("hi, hours?", 10 * MINUTE), ("reply:talk", 9 * MINUTE)],
    "HELP answered at once": [
        ("in", 60 * MINUTE),
        ("HELP", 10 * MINUTE),
        ("reply:help", 10 * MINUTE - timedelta(seconds=20)),
    ],
}
"""On shifting (a cap of one a day, a 2-minute reply window, a day's conversation
window): replies sent a minute after the text they answer, and one 20 s after it."""


async def test_a_change_of_rules_dated_back_counts_a_reply_sent_outside_its_window(service):
    """Each reply escaped the cap when recorded, sent inside its window. Then a change
    of the rules dated back before them all shortens the reply and conversation
    windows to 30 s: in the facts' own order a reply sent a minute after its text
    earned nothing, counts, and the cap of one a day is reached; the one sent 20 s
    after still escapes it."""
    phones = {name: f"+1415558{i:04d}" for i, name in enumerate(SHIFTING)}
    async with client(service.address, "acme-app") as app, client(service.address) as admin:
        w = Writes(app)
        await exchanges(w, "shifting", SHIFTING_FROM, SHIFTING, phones)

        async def reasons() -> dict[str, tuple[str, str]]:
            found = await both_answers(admin, w, "shifting", phones)
            return {
                name: (api.Reason.Name(one.reason), api.Reason.Name(together.reason))
                for name, (one, together) in found.items()
            }

        active = ("REASON_CONSENT_ACTIVE",) * 2
        assert await reasons() == {name: active for name in SHIFTING}
        await windows_dated_back(admin, "shifting", SHIFTING_FROM, CAP, 30)
        capped = ("REASON_FREQUENCY_CAP_REACHED",) * 2
        expected = {name: capped for name in SHIFTING}
        expected["HELP answered at once"] = active
        assert await reasons() == expected


async def a_conversation_reply_then(
    service, phone: str, later: list[tuple[str | None, float]]
) -> tuple[str, str]:
    """An opt-in of capped, a text to its number 10 minutes ago and a conversation reply
    a minute later (escaping the cap of one a day when recorded); then, recorded after
    it, each opt-out of ``later`` (of that campaign, or the brand's for None, dated
    that many minutes ago) with an opt-in a minute after it. The reasons CanSend and
    CanSendBatch give for a regular message of capped."""
    now = CLOCK.now
    async with client(service.address, "acme-app") as app:
        w = Writes(app)
        w.wrote(await app.RecordOptIn(opt_in(phone, "acme", "capped", now - 60 * MINUTE)))
        text = inbound(phone, CAPPED_FROM, "hi, hours?", now - 10 * MINUTE)
        w.wrote(await app.HandleInboundMessage(text))
        kind = lpb.MESSAGE_KIND_CONVERSATION_REPLY
        reply = sent(phone, "acme", "capped", now - 9 * MINUTE, kind=kind, from_number=CAPPED_FROM)
        w.wrote(await app.RecordMessageSent(reply))
        for campaign, ago in later:
            w.wrote(await app.RecordOptOut(opt_out(phone, "acme", campaign, now - ago * MINUTE)))
            again = opt_in(phone, "acme", "capped", now - (ago - 1) * MINUTE)
            w.wrote(await app.RecordOptIn(again))
        ask = dict(phone=phone, brand="acme", campaign="capped", at_least_as_fresh=w.token.encode())
        one = await app.CanSend(api.CanSendRequest(**ask))
        ask.pop("phone")
        batch = await app.CanSendBatch(api.CanSendBatchRequest(phones=[phone], **ask))
    return api.Reason.Name(one.reason), api.Reason.Name(batch.decisions[0].reason)


@pytest.mark.parametrize(("stop_ago", "counted"), [(9.5, True), (8, False)])
async def test_an_opt_out_dated_inside_a_conversation_counts_its_reply(service, stop_ago, counted):
    """A text to capped's number, and a conversation reply a minute later that escaped
    the cap when recorded; then an opt-out dated between the two (recorded after the
    reply) and an opt-in again: in the facts' own order the opt-out closed the
    conversation, the reply earned nothing, and the cap of one a day is reached. An
    opt-out dated after the reply leaves it out."""
    phone = f"+14155570{int(stop_ago * 10):03d}"
    expected = "REASON_FREQUENCY_CAP_REACHED" if counted else "REASON_CONSENT_ACTIVE"
    assert await a_conversation_reply_then(service, phone, [("capped", stop_ago)]) == (
        expected,
        expected,
    )


@pytest.mark.parametrize("campaign_of", ["capped", None], ids=["campaign", "brand-wide"])
async def test_a_reply_counted_by_an_opt_out_later_replaced_stays_counted(service, campaign_of):
    """As above, the opt-out dated inside the conversation counted the reply; then another
    opt-out and an opt-in, which made the first no longer the latest. The state stored
    for the number kept only the latest, and folded again from it when the next fact
    came, the reply escaped the cap again: CanSend allowed a second message within the
    day. The counted reply now keeps the opt-out that counted it."""
    phone = f"+1415557400{campaign_of is None:d}"
    later = [(campaign_of, 9.5), (campaign_of, 5)]
    capped = "REASON_FREQUENCY_CAP_REACHED"
    assert await a_conversation_reply_then(service, phone, later) == (capped, capped)


# Each history's facts in the order they are recorded: each reply, with the opt-out
# language, 3 minutes after what it answered (outside the 2-minute windows).
WIDENING: dict[str, list[Fact]] = {
    "HELP": [("in", 60 * MINUTE), ("HELP", 10 * MINUTE), ("reply:help", 7 * MINUTE)],
    "START": [
        ("in", 60 * MINUTE),
        ("STOP", 12 * MINUTE),
        ("START", 10 * MINUTE),
        ("reply:start", 7 * MINUTE),
    ],
    "conversation": [("in", 60 * MINUTE), ("hi, hours?", 10 * MINUTE), ("reply:talk", 7 * MINUTE)],
    "conversation, its text recorded after": [
        ("in", 60 * MINUTE),
        ("reply:talk", 7 * MINUTE),
        ("hi, hours?", 10 * MINUTE),
    ],
}


async def test_a_reply_that_counted_never_carried_the_opt_out_language_for_the_next(service):
    """Each reply was recorded as counting: sent outside its 2-minute window, or before
    the text it answered. Then a change of the rules dated back before them all widens
    the windows to 5 minutes: in the facts' own order each reply escaped the caps and
    met nothing, so the next regular message owes the opt-out language. The reply
    that counted had stood as the message that carried it: that message owed less.
    It owes the language before the change and after it, by CanSend and CanSendBatch."""
    phones = {name: f"+1415556{i:04d}" for i, name in enumerate(WIDENING)}
    async with client(service.address, "acme-app") as app, client(service.address) as admin:
        w = Writes(app)
        await exchanges(w, "widening", WIDENING_FROM, WIDENING, phones)

        async def owed() -> dict[str, tuple[bool, bool]]:
            found = await both_answers(admin, w, "widening", phones)
            language = api.OBLIGATION_INCLUDE_OPT_OUT_LANGUAGE
            for name, (one, together) in found.items():
                assert one.allowed and together.allowed, (name, one, together)
            return {
                name: (language in one.obligations, language in together.obligations)
                for name, (one, together) in found.items()
            }

        assert await owed() == {name: (True, True) for name in WIDENING}
        await windows_dated_back(admin, "widening", WIDENING_FROM, CAP_OF_THREE, 300)
        assert await owed() == {name: (True, True) for name in WIDENING}


@pytest.mark.parametrize("kind", ["START", "conversation"])
@pytest.mark.parametrize(("stops_ago", "counted"), [((9.5, 8), True), ((8,), False)])
async def test_another_campaigns_opt_out_inside_an_exchange_counts_its_reply(
    service, kind, stops_ago, counted
):
    """Under the revoke-all rule (campaign all's own), a START's confirmation or a
    conversation reply a minute after its text escaped the cap of one a day when
    recorded. Then opt-outs of news, recorded after it: one dated inside the exchange
    revoked all of the brand's campaigns in the facts' own order, so the reply earned
    nothing, though a later opt-out of news, dated after the reply, is news' latest.
    After an opt-in again, the cap is reached. Opt-outs dated after the reply leave it
    out."""
    phone = f"+14155571{len(stops_ago)}{kind == 'START':d}0"
    now = CLOCK.now
    async with client(service.address, "acme-app") as app:
        w = Writes(app)
        w.wrote(await app.RecordOptIn(opt_in(phone, "acme", "all", now - 60 * MINUTE)))
        if kind == "START":
            w.wrote(
                await app.HandleInboundMessage(inbound(phone, ALL_FROM, "STOP", now - 12 * MINUTE))
            )
        body = "START" if kind == "START" else "hi, hours?"
        w.wrote(await app.HandleInboundMessage(inbound(phone, ALL_FROM, body, now - 10 * MINUTE)))
        reply_kind = (
            lpb.MESSAGE_KIND_OPT_IN_CONFIRMATION
            if kind == "START"
            else lpb.MESSAGE_KIND_CONVERSATION_REPLY
        )
        reply = sent(phone, "acme", "all", now - 9 * MINUTE, kind=reply_kind, from_number=ALL_FROM)
        w.wrote(await app.RecordMessageSent(reply))
        for ago in stops_ago:
            w.wrote(await app.RecordOptOut(opt_out(phone, "acme", "news", now - ago * MINUTE)))
        w.wrote(await app.RecordOptIn(opt_in(phone, "acme", "all", now - MINUTE)))
        ask = dict(phone=phone, brand="acme", campaign="all", at_least_as_fresh=w.token.encode())
        one = await app.CanSend(api.CanSendRequest(**ask))
        ask.pop("phone")
        batch = await app.CanSendBatch(api.CanSendBatchRequest(phones=[phone], **ask))
    expected = "REASON_FREQUENCY_CAP_REACHED" if counted else "REASON_CONSENT_ACTIVE"
    assert api.Reason.Name(one.reason) == api.Reason.Name(batch.decisions[0].reason) == expected


@pytest.mark.parametrize("late", ["opt-in inside a START's", "import inside a STOP's"])
@pytest.mark.parametrize(("late_ago", "counted"), [(9.5, True), (8, False)])
async def test_a_fact_dated_inside_a_replys_exchange_counts_the_reply(
    service, late, late_ago, counted
):
    """A START's confirmation, or a STOP's, a minute after it, escaped capped's cap of
    one a day when recorded. Then, recorded after it but dated between the two, an
    opt-in of capped (the consent then stood on it, not on what the START resumed) or
    an imported opt-out of capped (the latest when the confirmation went out, whose
    confirmation the platform that received it owed): in the facts' own order the
    reply earned nothing, and the cap is reached. Dated after the reply, neither
    changes anything."""
    start = late.startswith("opt-in")
    phone = f"+1415557{2 if start else 3}{late_ago * 10:03.0f}"
    now = CLOCK.now
    async with client(service.address, "acme-app") as app:
        w = Writes(app)
        w.wrote(await app.RecordOptIn(opt_in(phone, "acme", "capped", now - 60 * MINUTE)))
        for body, ago in [("STOP", 12), ("START", 10)] if start else [("STOP", 10)]:
            text = inbound(phone, CAPPED_FROM, body, now - ago * MINUTE)
            w.wrote(await app.HandleInboundMessage(text))
        kind = (
            lpb.MESSAGE_KIND_OPT_IN_CONFIRMATION if start else lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION
        )
        reply = sent(phone, "acme", "capped", now - 9 * MINUTE, kind=kind, from_number=CAPPED_FROM)
        w.wrote(await app.RecordMessageSent(reply))
        at = now - late_ago * MINUTE
        if start:
            w.wrote(await app.RecordOptIn(opt_in(phone, "acme", "capped", at)))
        else:
            await w.import_([[record(phone, ("out:capped", late_ago * MINUTE))]])
            w.wrote(await app.RecordOptIn(opt_in(phone, "acme", "capped", now - MINUTE)))
        ask = dict(phone=phone, brand="acme", campaign="capped", at_least_as_fresh=w.token.encode())
        answer = await app.CanSend(api.CanSendRequest(**ask))
    expected = "REASON_FREQUENCY_CAP_REACHED" if counted else "REASON_CONSENT_ACTIVE"
    assert api.Reason.Name(answer.reason) == expected, answer
