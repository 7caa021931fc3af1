"""A worked example: keep a SQLite table of consent status in sync with the ledger.

The ``consent_status`` table has one row per brand, phone and campaign the phone
ever opted in to, saying whether it is opted in now: what a CRM or a mailing
tool wants next to its contacts.
Run it beside the service::

    python -m services.consumer.opt_out_table --bootstrap kafka:9092 \\
        --group opt-out-table --db opt_outs.sqlite

Stop it (Ctrl-C, or a crash) and start it again: it resumes from its group's
committed offsets. The consumer delivers at least once, and a retried append can
store one fact twice, so each event is applied in one transaction with its event
id, and an id already applied is skipped: the first copy of a fact wins.

The table is a copy for reading, never an authority: whether a message may be
sent is ``CanSend``'s answer, which also knows quiet hours, caps, tiers and
proofs. The table may say "opted out" where CanSend allows (it applies the
revoke-all rule to every brand already), never "opted in" where CanSend denies
for want of consent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from ledger.errors import InvalidPhoneNumber
from ledger.events import (
    ANY_BRAND,
    ConsentGranted,
    ConsentResumed,
    ConsentRevoked,
    LedgerEvent,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    SubjectErased,
)
from ledger.phone import to_e164
from ledger.ports import Stream
from services.consumer.stream import StreamConsumer, StreamConsumerSettings, StreamEvent

SCHEMA = """
-- The latest fact of each kind, by when it happened in the world (occurred_at):
-- granted, revoked, resumed per campaign; revoked, resumed, erased under campaign ''
-- for facts about every campaign of the brand (STOPALL, a brand-wide START, an erasure).
-- A fact stamped ahead of the service's clock is placed when it was recorded and
-- keeps the time it said (stated_at): stated is the latest time an opt-out of the
-- kind said, and the time the latest consent of the kind said.
CREATE TABLE IF NOT EXISTS facts (
    brand       TEXT NOT NULL,
    phone       TEXT NOT NULL,
    campaign    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    occurred_at TEXT NOT NULL,  -- fixed-width UTC ISO 8601: text order is time order
    stated      TEXT NOT NULL,  -- the same, never earlier than occurred_at
    PRIMARY KEY (brand, phone, campaign, kind)
);
-- Opt-outs held for review: each stops every campaign of its brand ('*': of every
-- brand) until resolved.
CREATE TABLE IF NOT EXISTS holds (
    event_id TEXT PRIMARY KEY, brand TEXT NOT NULL, phone TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS hold_resolutions (
    candidate_id TEXT NOT NULL, brand TEXT NOT NULL, PRIMARY KEY (candidate_id, brand)
);
CREATE TABLE IF NOT EXISTS consent_status (
    brand TEXT NOT NULL, phone TEXT NOT NULL, campaign TEXT NOT NULL,
    opted_in INTEGER NOT NULL,
    PRIMARY KEY (brand, phone, campaign)
);
CREATE TABLE IF NOT EXISTS applied_events (event_id TEXT PRIMARY KEY);
-- The request each request id was first applied with: a consent of another request
-- under that id is no fact, as the service's view reads it.
CREATE TABLE IF NOT EXISTS request_use (
    brand TEXT NOT NULL, request_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
    PRIMARY KEY (brand, request_id)
);
-- The keys erasures destroyed, and the key that sealed each campaign's latest
-- opt-in: an opt-in sealed with a destroyed key lost its proof with it, wherever
-- the ledger placed it (it was under way while the number was erased).
CREATE TABLE IF NOT EXISTS erased_keys (
    brand TEXT NOT NULL, phone TEXT NOT NULL, key_id TEXT NOT NULL,
    PRIMARY KEY (brand, phone, key_id)
);
CREATE TABLE IF NOT EXISTS grant_keys (
    brand TEXT NOT NULL, phone TEXT NOT NULL, campaign TEXT NOT NULL, key_id TEXT NOT NULL,
    PRIMARY KEY (brand, phone, campaign)
);
"""


Times = tuple[str, str]
"""A fact's (place, stated time): ``occurred_at`` and ``stated`` of ``facts``."""


def _after(consent: Times, opt_out: Times | None) -> bool:
    """Whether ``consent`` comes after ``opt_out`` both by place and by the times each
    said, as CanSend orders them; at the same instant the opt-out wins."""
    return opt_out is None or (consent[0] > opt_out[0] and consent[1] > opt_out[1])


def opted_in(facts: dict[tuple[str, str], Times], campaign: str) -> bool:
    """Whether ``campaign``'s consent stands, from the latest facts of one phone at one
    brand ((campaign, kind) -> (place, stated time); campaign '' for the brand's), as
    CanSend reads them (``ledger.policy.standing``). Times are compared as the ledger
    folds them, in world order, and a consent outranks an opt-out only when it is the
    later by both its place and the time it said: an opt-out stamped ahead outranks a
    consent stated before its time, recorded after it or not."""
    grant = facts.get((campaign, "granted"))
    erased = facts.get(("", "erased"))
    if grant is None or (erased is not None and grant[0] <= erased[0]):
        return False  # an erasure takes the proof of every consent before it
    own, brand = facts.get((campaign, "revoked")), facts.get(("", "revoked"))
    brand_resumed = facts.get(("", "resumed"))

    def stands(consent: Times) -> bool:
        # A brand-wide START lifts a STOPALL, never this campaign's own STOP.
        if not _after(consent, own):
            return False
        since = consent if _after(consent, brand) else None
        if (
            brand_resumed is not None
            and brand_resumed[0] > consent[0]
            and _after(brand_resumed, brand)
        ):
            since = brand_resumed
        # Revoke-all (47 CFR 64.1200(a)(10)): an opt-out of any campaign of the
        # brand that this consent does not come after ends it too. CanSend applies
        # the rule to every brand from 2027-01-31, and before that to brands and
        # campaigns that chose it; the table applies it already, so it never says
        # "opted in" where CanSend says no.
        return since is not None and all(
            kind != "revoked" or not name or _after(since, times)
            for (name, kind), times in facts.items()
        )

    # A START to the campaign's number restores a grant before it; one stated too
    # early lifts nothing, and takes nothing from the grant either.
    resumed = facts.get((campaign, "resumed"))
    return (resumed is not None and resumed[0] > grant[0] and stands(resumed)) or stands(grant)


def _text(moment: datetime) -> str:
    """``moment`` as fixed-width UTC ISO 8601, whose text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def one_spelling(phone: str) -> str:
    """The spelling the service keeps a number's facts under. Some lines are written
    two ways (Argentina's mobile 9, Gabon's 2019 plan), and facts an older version
    recorded under the other spelling stay there (another key, another partition):
    CanSend reads both as one number, and so must a copy of it."""
    try:
        return to_e164(phone)
    except InvalidPhoneNumber:  # the ledger wrote it, so it stays as written
        return phone


class OptOutTable:
    """The table, and the one function that applies an event to it.

    Facts are applied in the order they happened in the world (``occurred_at``),
    as the ledger folds them, not in the order they arrive: an opt-in imported
    late from a paper form must not undo an opt-out that came after it. So the
    table keeps the latest fact of each kind per campaign (and per brand, for
    STOPALL, a brand-wide START and an erasure) and the opt-outs held for review,
    and works a phone's rows out again from them whenever one changes.
    """

    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(path)
        found = self.db.execute("SELECT type FROM sqlite_master WHERE name = 'consent_status'")
        if found.fetchone() == ("view",):
            # An earlier version of this example built it, and missed opt-outs.
            raise ValueError(f"{path} is an older example's table: rebuild it under a new group")
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(facts)")}
        if columns and "stated" not in columns:
            # An earlier version kept no stated times: the opt-outs stamped ahead it
            # applied would outrank nothing they should.
            raise ValueError(f"{path} is an older example's table: rebuild it under a new group")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def apply(self, item: StreamEvent) -> bool:
        """Apply ``item`` once; False when its event id was applied before."""
        with self.db:  # one transaction: the event id and what it changed, or neither
            applied = self.db.execute(
                "INSERT OR IGNORE INTO applied_events (event_id) VALUES (?)", (str(item.event_id),)
            )
            if applied.rowcount == 0:
                return False
            if self._another_requests(item.event) and isinstance(
                item.event, ConsentGranted | ConsentResumed
            ):
                return True
            phone = self._record(item.event)
            if phone is not None:
                self._refresh(phone)
            return True

    def _another_requests(self, event: LedgerEvent) -> bool:
        """Whether ``event``'s request id was first applied with another request's
        fingerprint: the service refuses a request that reuses another's id before
        appending it, but a race can let one through, and its view then skips it
        (protos/README.md, "Delivery and de-duplication"). Only a consent is skipped
        here: an opt-out applied anyway can only make the table say "opted out"."""
        if not event.request_id:
            return False
        key = (getattr(event, "brand", ""), event.request_id)
        self.db.execute(
            "INSERT OR IGNORE INTO request_use VALUES (?, ?, ?)", (*key, event.request_fingerprint)
        )
        (first,) = self.db.execute(
            "SELECT fingerprint FROM request_use WHERE brand = ? AND request_id = ?", key
        ).fetchone()
        return bool(first != event.request_fingerprint)

    def _record(self, event: LedgerEvent) -> str | None:
        """Keep what ``event`` says about consent; the phone it concerns, or None when
        it says nothing about consent (a send, a delivery report, a legal hold, a
        reconfirmation of a consent that stands or falls by its grant)."""
        if isinstance(event, ConsentGranted):
            campaign, kind = event.campaign, "granted"
        elif isinstance(event, ConsentRevoked):
            campaign, kind = event.campaign or "", "revoked"  # no campaign: STOPALL
        elif isinstance(event, ConsentResumed):
            campaign, kind = event.campaign or "", "resumed"
        elif isinstance(event, SubjectErased):
            campaign, kind = "", "erased"
        elif isinstance(event, RevocationCandidateFlagged):
            phone = one_spelling(event.phone)
            self.db.execute(
                "INSERT OR IGNORE INTO holds VALUES (?, ?, ?)",
                (str(event.event_id), event.brand, phone),
            )
            return phone
        elif isinstance(event, RevocationCandidateResolved):
            # Dismissed or revoked (the latter with its own ConsentRevoked), either
            # ends the hold; but a "revoked" under brand '*' opted out of no brand,
            # so that hold stands (recorded before the service refused them).
            if event.lifts_hold:
                self.db.execute(
                    "INSERT OR IGNORE INTO hold_resolutions VALUES (?, ?)",
                    (str(event.candidate_event_id), event.brand),
                )
            return one_spelling(event.phone)
        else:
            return None
        phone = one_spelling(event.phone)
        stated_at = getattr(event, "stated_at", None)
        said = event.occurred_at if stated_at is None else max(stated_at, event.occurred_at)
        # Of the opt-outs, the latest time any said; of the consents, the time the
        # latest by place said (the earlier of two placed at one instant: doubt denies).
        self.db.execute(
            "INSERT INTO facts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
            " stated = CASE WHEN kind = 'revoked' THEN max(stated, excluded.stated)"
            " WHEN excluded.occurred_at > occurred_at THEN excluded.stated"
            " WHEN excluded.occurred_at = occurred_at THEN min(stated, excluded.stated)"
            " ELSE stated END,"
            " occurred_at = max(occurred_at, excluded.occurred_at)",
            (event.brand, phone, campaign, kind, _text(event.occurred_at), _text(said)),
        )
        if isinstance(event, SubjectErased):
            self.db.executemany(
                "INSERT OR IGNORE INTO erased_keys VALUES (?, ?, ?)",
                [(event.brand, phone, key_id) for key_id in event.key_ids],
            )
        elif isinstance(event, ConsentGranted):
            self._keep_grant_key(event, phone)
        return phone

    def _keep_grant_key(self, event: ConsentGranted, phone: str) -> None:
        """Note the key that sealed ``event`` if it is now its campaign's latest opt-in
        (none: one written before sealing, which only an erasure's time ends)."""
        (latest,) = self.db.execute(
            "SELECT occurred_at FROM facts WHERE brand = ? AND phone = ? AND campaign = ?"
            " AND kind = 'granted'",
            (event.brand, phone, event.campaign),
        ).fetchone()
        if latest != _text(event.occurred_at):
            return
        key = event.sealed.key_id if event.sealed is not None else ""
        self.db.execute(
            "INSERT INTO grant_keys VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO UPDATE SET key_id = excluded.key_id",
            (event.brand, phone, event.campaign, key),
        )

    def _refresh(self, phone: str) -> None:
        """Work out every ``consent_status`` row of ``phone`` again."""
        held = {
            brand
            for (brand,) in self.db.execute(
                "SELECT brand FROM holds AS h WHERE phone = ? AND NOT EXISTS"
                " (SELECT 1 FROM hold_resolutions AS r"
                "  WHERE r.candidate_id = h.event_id AND r.brand = h.brand)",
                (phone,),
            )
        }
        facts: dict[str, dict[tuple[str, str], Times]] = {}
        for brand, campaign, kind, when, said in self.db.execute(
            "SELECT brand, campaign, kind, occurred_at, stated FROM facts WHERE phone = ?",
            (phone,),
        ):
            facts.setdefault(brand, {})[campaign, kind] = (when, said)
        # Opt-ins whose latest was sealed with a key an erasure destroyed.
        proof_gone = set(
            self.db.execute(
                "SELECT g.brand, g.campaign FROM grant_keys AS g JOIN erased_keys AS e"
                " ON e.brand = g.brand AND e.phone = g.phone AND e.key_id = g.key_id"
                " WHERE g.phone = ?",
                (phone,),
            )
        )
        rows = []
        for brand, known in facts.items():
            # A held opt-out stops every campaign of its brand; one under '*', every brand's.
            stopped = bool(held & {brand, ANY_BRAND})
            granted = [campaign for campaign, kind in known if kind == "granted"]
            rows += [
                (
                    brand,
                    phone,
                    c,
                    int(not stopped and (brand, c) not in proof_gone and opted_in(known, c)),
                )
                for c in granted
            ]
        self.db.execute("DELETE FROM consent_status WHERE phone = ?", (phone,))
        self.db.executemany("INSERT INTO consent_status VALUES (?, ?, ?, ?)", rows)

    def status(self, brand: str, phone: str) -> dict[str, bool]:
        """Campaign -> opted in now, for every campaign ``phone`` opted in to at ``brand``."""
        rows = self.db.execute(
            "SELECT campaign, opted_in FROM consent_status WHERE brand = ? AND phone = ?",
            (brand, one_spelling(phone)),
        )
        return {campaign: bool(opted_in) for campaign, opted_in in rows}


async def keep_in_sync(
    table: OptOutTable, settings: StreamConsumerSettings, stop: asyncio.Event | None = None
) -> None:
    """Apply every subscriber event to ``table`` until ``stop`` is set."""

    async def handle(item: StreamEvent) -> None:
        # SQLite on a local file is quick enough to call inline; a remote database
        # would take an async driver here.
        table.apply(item)

    await StreamConsumer(settings).run(handle, stop=stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--group", default="opt-out-table", help="the consumer group")
    parser.add_argument("--db", default="opt_outs.sqlite", help="the SQLite file")
    parser.add_argument("--topic-prefix", default="", help="the ledger's topic prefix")
    args = parser.parse_args(argv)
    settings = StreamConsumerSettings(
        args.bootstrap,
        group_id=args.group,
        topic_prefix=args.topic_prefix,
        streams=(Stream.SUBSCRIBERS,),  # campaign definitions change no one's consent
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        table = OptOutTable(args.db)
        try:
            await keep_in_sync(table, settings, stop)
        finally:
            table.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
