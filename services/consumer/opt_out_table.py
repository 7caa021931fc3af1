"""A worked example: keep a SQLite table of consent status in sync with the ledger.

The ``consent_status`` view has one row per brand, phone and campaign the phone
ever opted in to, saying whether it is opted in now: what a CRM or a mailing
tool wants next to its contacts.
Run it beside the service::

    python -m services.consumer.opt_out_table --bootstrap kafka:9092 \\
        --group opt-out-table --db opt_outs.sqlite

Stop it (Ctrl-C) and start it again: it resumes from its group's committed
offsets. The consumer delivers at least once, and a retried append can store one
fact twice, so each event is applied in one transaction with its event id, and an
id already applied is skipped: the first copy of a fact wins.

The table is a copy for reading, never an authority: whether a message may be
sent is ``CanSend``'s answer, which also knows quiet hours, caps and proofs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sqlite3
from datetime import UTC
from pathlib import Path

from ledger.events import ConsentGranted, ConsentResumed, ConsentRevoked
from ledger.ports import Stream
from services.consumer.stream import StreamConsumer, StreamConsumerSettings, StreamEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS latest_fact (
    brand       TEXT NOT NULL,
    phone       TEXT NOT NULL,
    campaign    TEXT NOT NULL,  -- '' for a fact about every campaign of the brand
    opted_in    INTEGER NOT NULL,
    occurred_at TEXT NOT NULL,  -- fixed-width UTC ISO 8601: text order is time order
    event_id    TEXT NOT NULL,
    granted     INTEGER NOT NULL,  -- the phone opted in to this campaign at some time
    PRIMARY KEY (brand, phone, campaign)
);
CREATE TABLE IF NOT EXISTS applied_events (event_id TEXT PRIMARY KEY);
-- A campaign's status is its latest fact or the brand's, whichever happened later;
-- at the same instant an opt-out wins.
CREATE VIEW IF NOT EXISTS consent_status AS
SELECT c.brand, c.phone, c.campaign,
       CASE WHEN b.occurred_at IS NULL OR c.occurred_at > b.occurred_at THEN c.opted_in
            WHEN b.occurred_at > c.occurred_at THEN b.opted_in
            ELSE min(b.opted_in, c.opted_in) END AS opted_in
FROM latest_fact AS c
LEFT JOIN latest_fact AS b ON b.brand = c.brand AND b.phone = c.phone AND b.campaign = ''
WHERE c.campaign != '' AND c.granted;
"""


class OptOutTable:
    """The table, and the one function that applies an event to it.

    Facts are applied in the order they happened in the world (``occurred_at``),
    as the ledger folds them, not in the order they arrive: an opt-in imported
    late from a paper form must not undo an opt-out that came after it. So the
    table keeps the latest fact per campaign (and per brand, for STOPALL and a
    brand-wide START), and the ``consent_status`` view compares them.
    """

    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def apply(self, item: StreamEvent) -> bool:
        """Apply ``item`` once; False when its event id was applied before."""
        event = item.event
        with self.db:  # one transaction: the event id and what it changed, or neither
            applied = self.db.execute(
                "INSERT OR IGNORE INTO applied_events (event_id) VALUES (?)", (str(item.event_id),)
            )
            if applied.rowcount == 0:
                return False
            if isinstance(event, ConsentGranted):
                self._record(item, event.brand, event.phone, event.campaign, opted_in=True)
            elif isinstance(event, ConsentRevoked | ConsentResumed):
                # No campaign: the fact covers every campaign of the brand.
                campaign = event.campaign or ""
                opted_in = isinstance(event, ConsentResumed)
                self._record(item, event.brand, event.phone, campaign, opted_in=opted_in)
            return True

    def _record(
        self, item: StreamEvent, brand: str, phone: str, campaign: str, *, opted_in: bool
    ) -> None:
        when = item.event.occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        scope = (brand, phone, campaign)
        granted = opted_in and bool(campaign)  # a brand-wide START grants nothing new
        fact = (int(opted_in), when, str(item.event_id))
        inserted = self.db.execute(
            "INSERT OR IGNORE INTO latest_fact VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*scope, *fact, int(granted)),
        )
        if inserted.rowcount:
            return
        self.db.execute(
            "UPDATE latest_fact SET opted_in = ?, occurred_at = ?, event_id = ?"
            " WHERE brand = ? AND phone = ? AND campaign = ?"
            " AND (occurred_at < ? OR (occurred_at = ? AND ? = 0))",
            (*fact, *scope, when, when, int(opted_in)),
        )
        if granted:
            self.db.execute(
                "UPDATE latest_fact SET granted = 1 WHERE brand = ? AND phone = ? AND campaign = ?",
                scope,
            )

    def status(self, brand: str, phone: str) -> dict[str, bool]:
        """Campaign -> opted in now, for every campaign ``phone`` opted in to at ``brand``."""
        rows = self.db.execute(
            "SELECT campaign, opted_in FROM consent_status WHERE brand = ? AND phone = ?",
            (brand, phone),
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
