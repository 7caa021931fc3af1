"""``PostgresConsentView``: the ``ConsentView`` port on PostgreSQL (asyncpg).

``apply`` writes a batch in one transaction: the folded state of every phone and
brand it touches, their consent standing for audit queries, an indexed copy of
each event, campaign history and sender numbers, and the consumed positions. It
first locks the position rows of the batch's partitions, so two projectors
handed the same partitions during a Kafka rebalance take turns, and the second
finds the batch already applied and writes nothing.

Everything is read in one query per table per batch, and the rows written go
into each table by one statement whose parameter is the rows as an array of the
table's own row type (``_rows_of``): PostgreSQL parses and runs a handful of statements per
batch instead of one per row, and the batch's cost grows with its size, not
with round trips. Rows the batch knows to be new (its event copies, the states
of subscribers not stored yet) go in by ``COPY`` instead, and every write is
queued on the connection while the fold goes on (``_Writes``). Each fact is
encoded once, for its event copy and for the snapshots that keep it
(``join_snapshot``), and a fact read from the ledger is not encoded at all: its
copy is joined from the bytes it was stored as (``encode_recorded`` of a
``Recorded.envelope``). The tables are created by
``services/migrations/0002_projections.sql``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from ledger.digest import Digest, digest_of, with_phone_wide
from ledger.events import (
    ANY_BRAND,
    BRAND_SETTINGS,
    CampaignEvent,
    ConsentRevoked,
    InboundMessageReceived,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    SubscriberEvent,
)
from ledger.opt_out_rate import SendingCounts
from ledger.policy import latest_revocation
from ledger.ports import (
    AppendTurn,
    Applied,
    ChangesPage,
    ConsentView,
    Flagged,
    MessageClaim,
    Offsets,
    RequestClaim,
    RequestTaken,
    RequestUse,
    Stream,
    UnreadableDigests,
    page_of_changes,
    refuse_if_rebuilt,
)
from ledger.state import (
    CampaignHistory,
    Fact,
    SubscriberState,
    apply,
    fold,
    fold_campaign,
    new_state,
    retained,
    sender_number_holder,
)
from ledger.status import ConsentState, consent_state, revocation_in_force
from ledger.view_keys import restorable_key, stated_ahead_key
from services.adapters.coalescing import Coalesced
from services.adapters.postgres_bounds import bounded, bounded_bulk, fetch_bulk
from services.wire.codec import (
    decode_recorded,
    decode_snapshot,
    encode_recorded,
    join_snapshot,
    split_snapshot,
)
from services.wire.digest import FORMAT as DIGEST_FORMAT
from services.wire.digest import decode_digest, encode_digest

log = logging.getLogger(__name__)

PROJECTION_TABLES = (
    "subscriber_state",
    "consent_status",
    "ledger_event_copy",
    "campaign_version",
    "sender_number",
    "projection_offset",
    "flagged_reply",
    "message_use",
)
"""Every table the view owns; all of it is rebuilt from the ledger. (Not
``flagged_reply_counter``: positions in the review queue never go back; nor
``request_use``: writers took request ids there, see ``claim_request``.)"""

# The turn for campaign writes (``campaign_writes``): a transaction's advisory lock, so
# a holder whose connection dies gives it up. Asked for again and again rather than
# waited on, so a cancelled writer is never left inside a lock wait.
_VIEW_LOCKS = 0x56494557  # "VIEW": the advisory-lock namespace of the view
_CAMPAIGN_TURN = f"SELECT pg_try_advisory_xact_lock({_VIEW_LOCKS}, 1)"
_TURN_POLL = 0.01

_CLAIM_POSITIONS = """
INSERT INTO projection_offset (stream, partition, next_offset)
SELECT $1, p, 0 FROM unnest($2::integer[]) AS p
ON CONFLICT DO NOTHING
"""
_LOCK_POSITIONS = """
SELECT partition, next_offset FROM projection_offset
WHERE stream = $1 AND partition = ANY($2::integer[])
ORDER BY partition
FOR UPDATE
"""
_WRITE_POSITIONS = """
UPDATE projection_offset AS p SET next_offset = k.next_offset
FROM unnest($2::integer[], $3::bigint[]) AS k(partition, next_offset)
WHERE p.stream = $1 AND p.partition = k.partition
"""
_KNOWN_EVENTS = (
    'SELECT event_id, stream, partition, "offset" FROM ledger_event_copy'
    " WHERE event_id = ANY($1::uuid[])"
)


def _rows_of(table: str) -> str:
    """A batch's rows of ``table`` as a table ``k``: parameter $1 holds them as an
    array of the table's own row type (tuples of every column, in the table's
    order), and ``k.ordinality`` numbers them in the order given. One statement
    writes a batch of any size: in PostgreSQL's CPU, a statement per row cost 30 %
    more at 30 rows, and COPY through temporary staging tables twice as much at 30
    rows and 15 % more at 1,000; arrays of the rows cost the client 40 % less than
    arrays of each column (``bench/HISTORY.md``, "One statement per table a batch")."""
    return f"unnest($1::{table}[]) WITH ORDINALITY AS k"


_EVENT_COLUMNS = (
    "event_id", "stream", "partition", "offset", "event_type", "phone", "brand", "campaign",
    "occurred_at", "recorded_at", "payload",
)  # fmt: skip
_QUOTED_EVENT_COLUMNS = ", ".join(f'"{c}"' for c in _EVENT_COLUMNS)
# In the order given: the recorded order, in which the event copies' trigger
# (migration 0007) gives the batch's flagged replies their places in the review queue.
_INSERT_EVENTS = f"""
INSERT INTO ledger_event_copy ({_QUOTED_EVENT_COLUMNS})
SELECT {_QUOTED_EVENT_COLUMNS} FROM {_rows_of("ledger_event_copy")} ORDER BY k.ordinality
ON CONFLICT DO NOTHING
"""
# A request id taken by the first request applied with it (unless a writer took it
# first, claim_request); an event of the same request adds its id. Per id, the
# batch's first fingerprint inserts the row when the id is free; the others can only
# add their ids to a row that holds their fingerprint already (the second
# statement). Rows are taken in key order (the order given), so two batches that
# share ids cannot deadlock; the second statement finds them locked by the first already.
# A row that holds every id already (a writer claimed them, take_request) is locked
# but not rewritten: a new row version per request cost as much as the insert.
_ADD_IDS = """
event_ids = u.event_ids || ARRAY(
    SELECT e FROM unnest({ids}) WITH ORDINALITY AS t(e, n)
    WHERE e <> ALL(u.event_ids) ORDER BY n)
"""
_USE_REQUESTS = f"""
INSERT INTO request_use AS u (brand, request_id, fingerprint, event_ids)
SELECT brand, request_id, fingerprint, event_ids FROM {_rows_of("request_use")}
ORDER BY k.ordinality
ON CONFLICT (brand, request_id) DO UPDATE
SET {_ADD_IDS.format(ids="EXCLUDED.event_ids")}
WHERE u.fingerprint = EXCLUDED.fingerprint AND NOT u.event_ids @> EXCLUDED.event_ids
"""
_USE_REQUESTS_AGAIN = f"""
UPDATE request_use AS u SET {_ADD_IDS.format(ids="s.event_ids")}
FROM unnest($1::request_use[]) AS s
WHERE u.brand = s.brand AND u.request_id = s.request_id
  AND u.fingerprint = s.fingerprint AND NOT u.event_ids @> s.event_ids
"""
_REQUEST_HOLDERS = """
SELECT u.brand, u.request_id, u.fingerprint FROM request_use AS u
JOIN unnest($1::text[], $2::text[]) AS k(brand, request_id) USING (brand, request_id)
"""
# The writer's claim: the row it inserted, or the one that was there. A row committed
# by another writer after this statement's snapshot conflicts but is not read: then
# the statement is run again.
_CLAIM_REQUEST = """
WITH taken AS (
    INSERT INTO request_use (brand, request_id, fingerprint, event_ids)
    VALUES ($1, $2, $3, $4::uuid[])
    ON CONFLICT DO NOTHING
    RETURNING fingerprint, event_ids
)
SELECT fingerprint, event_ids FROM taken
UNION ALL
SELECT fingerprint, event_ids FROM request_use WHERE brand = $1 AND request_id = $2
LIMIT 1
"""
# take_request: the request id's claim, whether this statement made it, and for a
# send its message id's first use and first claim, in one round trip. A message
# recorded under another event blocks both claims (that send is answered, not
# written); one claimed by another send blocks the request id's claim unless $7 (the
# caller caught the view up and asks again). No row back means a claim another
# writer committed after this statement's snapshot ran into the insert unseen: ask
# again. A message claim met that way reads as none (claimed_by NULL): the caller
# then waits for the view, as it would for another send's claim. $8 is what the send
# says of its message, kept with its claim and answered with another's; another's
# with other content blocks the request id even past claims (that send is refused). A
# send whose request id another request holds is refused too, so it claims nothing.
# $9 is the call's place in a batch of takes (``_take_many``), whose rows come back
# as one list. $10 is the part of the take the statement does: 0 all of it; 1 only
# the message claim, answering nothing; 2 all but making the message claim (made by
# the batch's part 1 before, and read here), and dropping a claim it made if the
# request id turns out to be another request's, as part 0 would not have made it.
# A claim that is already this send's (its earlier attempt's) is made anew: its age
# starts again, as the attempt may append now (``take_over_message_claims``).
_TAKE_REQUEST = """
WITH sent AS (
    SELECT event_id FROM message_use
    WHERE $5::text IS NOT NULL AND brand = $1 AND phone = $5 AND message_id = $6
), made AS (
    INSERT INTO message_claim (brand, phone, message_id, event_id, content)
    SELECT $1, $5, $6, ($4::uuid[])[1], $8::text
    WHERE $5::text IS NOT NULL AND $10::int <> 2
      AND NOT EXISTS (SELECT 1 FROM sent WHERE event_id <> ALL($4::uuid[]))
      AND NOT EXISTS (
          SELECT 1 FROM request_use WHERE brand = $1 AND request_id = $2 AND fingerprint <> $3
      )
    ON CONFLICT DO NOTHING
    RETURNING event_id, content
), renewed AS (
    UPDATE message_claim SET claimed_at = now()
    WHERE $5::text IS NOT NULL AND $10::int <> 2 AND brand = $1 AND phone = $5
      AND message_id = $6 AND event_id = ANY($4::uuid[])
), claim AS (
    SELECT event_id, content FROM made
    UNION ALL
    SELECT event_id, content FROM message_claim
    WHERE $5::text IS NOT NULL AND brand = $1 AND phone = $5 AND message_id = $6
    LIMIT 1
), blocked AS (
    SELECT EXISTS (SELECT 1 FROM sent WHERE event_id <> ALL($4::uuid[]))
        OR ($5::text IS NOT NULL AND NOT $7::boolean
            AND NOT EXISTS (SELECT 1 FROM claim WHERE event_id = ANY($4::uuid[])))
        OR EXISTS (SELECT 1 FROM claim WHERE event_id <> ALL($4::uuid[]) AND content <> $8)
        AS blocked
), taken AS (
    INSERT INTO request_use (brand, request_id, fingerprint, event_ids)
    SELECT $1, $2, $3, $4::uuid[] FROM blocked WHERE NOT blocked AND $10 <> 1
    ON CONFLICT DO NOTHING
    RETURNING fingerprint, event_ids
), dropped AS (
    DELETE FROM message_claim
    WHERE $10 = 2 AND $5::text IS NOT NULL AND brand = $1 AND phone = $5 AND message_id = $6
      AND event_id = ANY($4::uuid[]) AND xmin = pg_current_xact_id()::xid
      AND NOT EXISTS (SELECT 1 FROM taken)
      AND NOT EXISTS (
          SELECT 1 FROM request_use WHERE brand = $1 AND request_id = $2 AND fingerprint = $3
      )
)
SELECT fingerprint, event_ids, true AS taken, (SELECT event_id FROM sent) AS sent_as,
       (SELECT event_id FROM claim) AS claimed_by, (SELECT content FROM claim) AS claimed_content,
       $9::int AS call
FROM taken
UNION ALL
SELECT fingerprint, event_ids, false, (SELECT event_id FROM sent),
       (SELECT event_id FROM claim), (SELECT content FROM claim), $9
FROM request_use WHERE brand = $1 AND request_id = $2 AND $10 <> 1
UNION ALL
SELECT NULL, NULL, false, (SELECT event_id FROM sent),
       (SELECT event_id FROM claim), (SELECT content FROM claim), $9
FROM blocked WHERE blocked AND $10 <> 1
LIMIT 1
"""
_CLAIM_MESSAGE = """
WITH made AS (
    INSERT INTO message_claim (brand, phone, message_id, event_id, content)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT DO NOTHING
    RETURNING event_id, content
)
SELECT event_id, content FROM made
UNION ALL
SELECT event_id, content FROM message_claim
WHERE brand = $1 AND phone = $2 AND message_id = $3
LIMIT 1
"""
# A batch of sends' message claims (``claim_messages``), one statement: the claims it
# made, or those that were there. In key order, so two batches cannot deadlock; a claim
# another writer committed after this statement's snapshot is not read: those keys are
# claimed again, and the next statement reads it.
# None is made when another send holds one with other content: that refuses the call.
# One that is already the batch's (its earlier attempt's) is made anew, as one send's is.
_CLAIM_MESSAGES = """
WITH k AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::uuid[], $5::text[])
        AS k(phone, message_id, event_id, content)
), other AS (
    SELECT 1 FROM message_claim AS c JOIN k USING (phone, message_id)
    WHERE c.brand = $1 AND c.event_id <> k.event_id AND c.content <> k.content
), renewed AS (
    UPDATE message_claim AS c SET claimed_at = now()
    FROM k WHERE c.brand = $1 AND c.phone = k.phone AND c.message_id = k.message_id
      AND c.event_id = k.event_id
), made AS (
    INSERT INTO message_claim (brand, phone, message_id, event_id, content)
    SELECT $1, phone, message_id, event_id, content FROM k
    WHERE NOT EXISTS (SELECT 1 FROM other)
    ORDER BY phone, message_id
    ON CONFLICT DO NOTHING
    RETURNING phone, message_id, event_id, content
)
SELECT phone, message_id, event_id, content FROM made
UNION ALL
SELECT c.phone, c.message_id, c.event_id, c.content FROM message_claim AS c
JOIN k USING (phone, message_id)
WHERE c.brand = $1
"""
# Each claim of a batch of messages (``message_claim_ages``), and the seconds since it
# was made, by the database's clock.
_MESSAGE_CLAIM_AGES = """
SELECT c.phone, c.message_id, c.event_id, c.content,
       extract(epoch FROM now() - c.claimed_at)::float8 AS age
FROM message_claim AS c
JOIN unnest($2::text[], $3::text[]) AS k(phone, message_id) USING (phone, message_id)
WHERE c.brand = $1
"""
# Claims of sends never written taken over (``take_over_message_claims``). A claim
# another taker changed first is locked until that one commits, then read again: no
# longer held by the dead event, it is left alone, so exactly one taker wins.
_TAKE_OVER_MESSAGE_CLAIMS = """
UPDATE message_claim AS c
SET event_id = k.event_id, content = k.content, claimed_at = now()
FROM unnest($2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::text[])
    AS k(phone, message_id, dead, event_id, content)
WHERE c.brand = $1 AND c.phone = k.phone AND c.message_id = k.message_id
  AND c.event_id = k.dead AND c.claimed_at <= now() - make_interval(secs => $7)
  AND NOT EXISTS (
      SELECT 1 FROM message_use AS u
      WHERE u.brand = $1 AND u.phone = k.phone AND u.message_id = k.message_id
  )
RETURNING c.phone, c.message_id
"""
# A refused request's claims given up (``release_claims``): its request id's and its
# messages', each only while it still holds the refused request's event ids.
_RELEASE_CLAIMS = """
WITH request AS (
    DELETE FROM request_use
    WHERE brand = $1 AND request_id = $2 AND fingerprint = $3 AND event_ids = $4::uuid[]
    RETURNING 1
), messages AS (
    DELETE FROM message_claim AS c
    USING unnest($5::text[], $6::text[], $7::uuid[]) AS k(phone, message_id, event_id)
    WHERE c.brand = $1 AND c.phone = k.phone AND c.message_id = k.message_id
        AND c.event_id = k.event_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM request) AS requests, (SELECT count(*) FROM messages) AS messages
"""
# A bulk import's claims (``claim_requests``), one statement for a chunk: the rows it
# inserted, or those that were there. Inserted in key order, so two imports that
# share ids cannot deadlock. Like _CLAIM_REQUEST, a row another writer committed
# after this statement's snapshot conflicts but is not read: those are claimed again.
_CLAIM_REQUESTS = """
WITH k AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
        AS k(brand, request_id, fingerprint, event_ids)
), taken AS (
    INSERT INTO request_use (brand, request_id, fingerprint, event_ids)
    SELECT brand, request_id, fingerprint, string_to_array(event_ids, ',')::uuid[]
    FROM k ORDER BY brand, request_id
    ON CONFLICT DO NOTHING
    RETURNING brand, request_id, fingerprint, event_ids
)
SELECT k.brand, k.request_id,
       coalesce(t.fingerprint, u.fingerprint) AS fingerprint,
       coalesce(t.event_ids, u.event_ids) AS event_ids
FROM k LEFT JOIN taken AS t USING (brand, request_id)
LEFT JOIN request_use AS u USING (brand, request_id)
"""
# The keys writes took for a batch's facts (``ledger.view_keys``), taken when free: a
# write's key, taken before its append, is left as it is. In key order, so two
# workers cannot deadlock.
_RESTORE_KEYS = """
INSERT INTO request_use (brand, request_id, fingerprint, event_ids)
SELECT brand, request_id, fingerprint, ARRAY[event_id]
FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[])
    AS k(brand, request_id, fingerprint, event_id)
ORDER BY brand, request_id
ON CONFLICT DO NOTHING
"""
# An import's turns to append (``take_append_turns``), one statement for a chunk: a
# turn is taken when free, run out, or this holder's already. Taken in key order, so
# two imports that share ids cannot deadlock. A turn another holder committed after
# this statement's snapshot, and kept, is not read (turn NULL): asked again.
_TAKE_APPEND_TURNS = """
WITH k AS (
    SELECT * FROM unnest($1::text[], $2::text[]) AS k(brand, request_id)
), taken AS (
    INSERT INTO append_turn AS t (brand, request_id, holder, until)
    SELECT brand, request_id, $3::uuid, now() + make_interval(secs => $4) FROM k
    ORDER BY brand, request_id
    ON CONFLICT (brand, request_id) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until
    WHERE t.until IS NOT NULL AND (t.holder = EXCLUDED.holder OR t.until <= now())
    RETURNING brand, request_id
)
SELECT k.brand, k.request_id,
       CASE WHEN x.request_id IS NOT NULL THEN 'taken'
            WHEN a.request_id IS NULL THEN NULL
            WHEN a.until IS NULL THEN 'appended'
            ELSE 'held' END AS turn
FROM k LEFT JOIN taken AS x USING (brand, request_id)
LEFT JOIN append_turn AS a USING (brand, request_id)
"""
# A holder's turns ended: appended (until NULL, and when), or given up (run out at once).
_END_APPEND_TURNS = """
UPDATE append_turn AS t SET until = CASE WHEN $4 THEN NULL ELSE '-infinity'::timestamptz END,
    appended_at = CASE WHEN $4 THEN now() END
FROM unnest($1::text[], $2::text[]) AS k(brand, request_id)
WHERE t.brand = k.brand AND t.request_id = k.request_id AND t.holder = $3::uuid
  AND t.until IS NOT NULL
"""
# At most $2 of the turns ended or run out more than $1 seconds ago (one given up ran
# out at -infinity). An import takes a turn for each record it appends, so there may
# be millions: a statement each bounded batch, not one past the statement's bound.
_PRUNE_APPEND_TURNS = """
WITH pruned AS (
    DELETE FROM append_turn WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM append_turn
        WHERE coalesce(until, appended_at) < now() - make_interval(secs => $1)
        LIMIT $2
    ))
    RETURNING 1
)
SELECT count(*) AS n FROM pruned
"""
_PRUNE_BATCH = 20_000
_REQUEST_USES_OF = """
SELECT u.brand, u.request_id, u.fingerprint, u.event_ids FROM request_use AS u
JOIN unnest($1::text[], $2::text[]) AS k(brand, request_id) USING (brand, request_id)
"""
# A batch's first sends of their message ids, in key order, and the sends that hold
# each id: those it made, or those that were there. Only the projector writes these
# rows, under the lock of the phone's partition position, so none can be committed
# by another after this statement's snapshot and be missed.
_USE_MESSAGES = f"""
WITH k AS (
    SELECT * FROM {_rows_of("message_use")}
), made AS (
    INSERT INTO message_use (brand, phone, message_id, event_id)
    SELECT brand, phone, message_id, event_id FROM k ORDER BY ordinality
    ON CONFLICT DO NOTHING
    RETURNING brand, phone, message_id, event_id
)
SELECT brand, phone, message_id, event_id FROM made
UNION ALL
SELECT m.brand, m.phone, m.message_id, m.event_id FROM message_use AS m
JOIN k USING (brand, phone, message_id)
"""
_BRAND_MESSAGE_USES = """
SELECT m.phone, m.message_id, m.event_id FROM message_use AS m
JOIN unnest($2::text[], $3::text[]) AS k(phone, message_id) USING (phone, message_id)
WHERE m.brand = $1
"""
_FIND_EVENTS = "SELECT event_id, payload FROM ledger_event_copy WHERE event_id = ANY($1::uuid[])"
_READ_FLAGGED = """
SELECT position, event_id, phone FROM flagged_reply
WHERE brand = $1 AND position > $2 AND resolved IS NOT TRUE ORDER BY position LIMIT $3
"""
# The batch's own replies are placed at the commit (migration 0007); a resolution
# in the same batch needs them placed now.
_PLACE_NOW = "SET CONSTRAINTS ledger_event_copy_place_flagged IMMEDIATE"
_MARK_RESOLVED = "UPDATE flagged_reply SET resolved = true WHERE event_id = ANY($1::uuid[])"
_LOAD_STATES = """
SELECT s.phone, s.brand, s.snapshot, s.last_offset, s.updated_at
FROM subscriber_state AS s
JOIN unnest($1::text[], $2::text[]) AS k(phone, brand) USING (phone, brand)
FOR UPDATE OF s
"""
_LOAD_PHONES_STATES = """
SELECT phone, brand, snapshot, last_offset, updated_at
FROM subscriber_state WHERE phone = ANY($1::text[]) AND brand <> $2
FOR UPDATE
"""
"""Every brand's state of the phones whose held STOPs of brand "*" a batch changes:
such a hold denies every brand's campaigns, so each brand's status rows are written
again."""
_STATE_CONFLICT = """
ON CONFLICT (phone, brand) DO UPDATE
SET snapshot = EXCLUDED.snapshot, last_offset = EXCLUDED.last_offset,
    updated_at = EXCLUDED.updated_at, digest = EXCLUDED.digest
"""
_STATE_COLUMNS = "phone, brand, snapshot, last_offset, updated_at, digest"
_UPSERT_STATES = f"""
INSERT INTO subscriber_state ({_STATE_COLUMNS})
SELECT {_STATE_COLUMNS} FROM {_rows_of("subscriber_state")} ORDER BY k.ordinality
{_STATE_CONFLICT}"""


def snapshot_unless_digest(format_param: str) -> str:
    """A select-list item of ``subscriber_state``: the snapshot, only for a row whose
    digest is missing or not in the format given by ``format_param`` (for
    ``stored_digest`` to digest), else NULL, so that rows do not carry it for nothing."""
    return (
        f"CASE WHEN digest IS NULL OR get_byte(digest, 0) <> {format_param} "
        "THEN snapshot END AS snapshot"
    )


_READ_DIGESTS = f"""
SELECT phone, brand, digest, {snapshot_unless_digest("$4")}
FROM subscriber_state WHERE brand IN ($1, $2) AND phone = ANY($3::text[])
"""
_OPEN_FLAGGED_TIMES = """
SELECT e.occurred_at FROM flagged_reply AS f JOIN ledger_event_copy AS e USING (event_id)
WHERE f.resolved IS NOT TRUE
"""
_STATUS_COLUMNS = """phone, brand, campaign, status, tier, granted_event_id, granted_at,
    revoked_event_id, revoked_at, updated_at, held_event_id"""
_STATUS_CONFLICT = """
ON CONFLICT (phone, brand, campaign) DO UPDATE
SET status = EXCLUDED.status, tier = EXCLUDED.tier,
    granted_event_id = EXCLUDED.granted_event_id, granted_at = EXCLUDED.granted_at,
    revoked_event_id = EXCLUDED.revoked_event_id, revoked_at = EXCLUDED.revoked_at,
    updated_at = EXCLUDED.updated_at, held_event_id = EXCLUDED.held_event_id
"""
_UPSERT_STATUSES = f"""
INSERT INTO consent_status ({_STATUS_COLUMNS})
SELECT {_STATUS_COLUMNS} FROM {_rows_of("consent_status")} ORDER BY k.ordinality
{_STATUS_CONFLICT}"""
_INSERT_VERSION = """
INSERT INTO campaign_version (brand, campaign, event_id, partition, "offset", occurred_at,
                              recorded_at, payload)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT DO NOTHING
"""
_LOAD_VERSIONS = """
SELECT v.brand, v.campaign, v.payload
FROM campaign_version AS v
JOIN unnest($1::text[], $2::text[]) AS k(brand, campaign) USING (brand, campaign)
ORDER BY v.brand, v.campaign, v.partition, v."offset"
"""
_DELETE_NUMBERS = """
DELETE FROM sender_number AS n
USING unnest($1::text[], $2::text[]) AS k(brand, campaign)
WHERE n.brand = k.brand AND n.campaign = k.campaign
"""
_INSERT_NUMBER = """
INSERT INTO sender_number (number, brand, campaign, since) VALUES ($1, $2, $3, $4)
"""
# The campaigns whose current rules list a number, with their histories, read in one
# statement (one snapshot) so the two agree. Which of several claims holds the number
# is worked out from the histories (ledger.state.sender_number_holder), as the
# in-memory view does; sender_number.since (when the current rules took effect) says
# nothing about when the claim began, so it does not decide.
_NUMBER_CLAIMS = """
SELECT n.brand, n.campaign, v.payload
FROM sender_number AS n
JOIN campaign_version AS v USING (brand, campaign)
WHERE n.number = $1
ORDER BY n.brand, n.campaign, v.partition, v."offset"
"""


async def read_pool(
    dsn: str | None, *, min_size: int = 2, max_size: int = 8, timeout: float | None = None
) -> asyncpg.Pool:
    """A pool for ``PostgresConsentView``'s single statements that calls wait on
    (CanSend's reads, a write's lookups and request claims), tuned for them.

    * asyncpg resets a connection's session (``RESET ALL``, ``UNLISTEN *``,
      unlocking advisory locks) when it goes back to a pool: one more round trip
      per statement. These are single statements that change no session state, so
      only what asyncpg does locally (rolling back a transaction left open, which
      they never leave) is kept.
    * PostgreSQL plans a prepared statement afresh on each run while it judges a
      custom plan cheaper, and for a lookup by primary key the planning costs more
      than the lookup. These statements have one good plan whatever the numbers
      (the primary key), so the connections use generic plans: planned once.

    * With ``timeout`` (seconds), the server cancels a statement that runs longer
      (``statement_timeout``: a lock wait, a slow plan), so a busy server frees the
      connection itself; a frozen one is left to ``bounded``.

    Use it for nothing else (but ``PostgresSubjectKeys``' single statements, which
    every opt-in's and opt-out's sealing waits on): transactions and the
    projector's writes use the view's main pool.
    """
    settings = {"plan_cache_mode": "force_generic_plan"}
    if timeout is not None:
        settings["statement_timeout"] = str(max(1, round(timeout * 1000)))
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        reset=_no_session_state,
        server_settings=settings,
    )


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """The reads change no session state: there is nothing to reset."""


def _load_state(phone: str, brand: str, snapshot: bytes) -> SubscriberState:
    return fold(decode_snapshot(snapshot), new_state(phone, brand))


def stored_digest(phone: str, brand: str, data: bytes | None, snapshot: bytes | None) -> Digest:
    """The digest of a ``subscriber_state`` row, read as ``_READ_DIGESTS`` reads it:
    the stored one, or, for a row written before digests or in another format
    (then ``snapshot`` is given), the digest of its snapshot. Raises (``ValueError``,
    or whatever decoding the bytes raises) when the row cannot be read."""
    digest = decode_digest(data)
    if digest is None:
        if snapshot is None:
            # In this format, yet not a digest of this shape: the query sent no snapshot.
            raise ValueError("the stored digest is in this format but cannot be read")
        digest = digest_of(_load_state(phone, brand, snapshot))
    return digest


def _of_campaign(alias: str) -> str:
    """The events ``alias`` of the campaign $4: those that name it, and the
    brand-wide ones (campaign NULL) of numbers the campaign texted in the window
    (looked up per event by the phone index)."""
    return (
        f" AND ({alias}.campaign = $4 OR ({alias}.campaign IS NULL AND EXISTS ("
        f"SELECT 1 FROM ledger_event_copy s WHERE s.phone = {alias}.phone"
        " AND s.brand = $1 AND s.campaign = $4"
        f" AND s.event_type = '{MessageSent.EVENT_TYPE}'"
        " AND s.occurred_at >= $2 AND s.occurred_at < $3)))"
    )


def _sending_counts_sql(campaign: bool) -> str:
    """``ledger.opt_out_rate.count_sending`` over ``ledger_event_copy``: $1 brand,
    $2 and $3 the window, $4 the campaign when ``campaign``. Each count is an index
    scan over the window (``ledger_event_copy``'s brand, campaign and occurred_at
    indexes), not a scan of the table. A hold is pending while ``flagged_reply``
    does not know it resolved: one flagged before migration 0008 and never rebuilt
    since counts as pending, the side that warns."""

    def window(alias: str) -> str:
        return f"{alias}.brand = $1 AND {alias}.occurred_at >= $2 AND {alias}.occurred_at < $3"

    def opt_outs(alias: str) -> str:
        return (
            f"{window(alias)}{_of_campaign(alias) if campaign else ''}"
            f" AND {alias}.event_type = '{ConsentRevoked.EVENT_TYPE}'"
        )

    return (
        f"SELECT (SELECT count(*) FROM ledger_event_copy AS m WHERE {window('m')}"
        f"{' AND m.campaign = $4' if campaign else ''}"
        f"         AND m.event_type = '{MessageSent.EVENT_TYPE}') AS sent,"
        f" (SELECT count(DISTINCT o.phone) FROM ledger_event_copy AS o"
        f"  WHERE {opt_outs('o')}) AS opt_outs,"
        f" (SELECT count(DISTINCT h.phone) FROM ledger_event_copy AS h"
        "  JOIN flagged_reply AS f USING (event_id)"
        f"  WHERE {window('h')}{_of_campaign('h') if campaign else ''}"
        f"  AND h.event_type = '{RevocationCandidateFlagged.EVENT_TYPE}'"
        "  AND f.resolved IS NOT TRUE"
        "  AND NOT EXISTS (SELECT 1 FROM ledger_event_copy AS o"
        f"   WHERE o.phone = h.phone AND {opt_outs('o')})) AS pending"
    )


_BRAND_COUNTS = _sending_counts_sql(campaign=False)
_CAMPAIGN_COUNTS = _sending_counts_sql(campaign=True)


_STATUS_COLUMN = {
    ConsentState.PENDING_REVIEW: "pending_review",
    ConsentState.ACTIVE: "active",
    ConsentState.REVOKED: "revoked",
    ConsentState.REVOKED_BRAND_WIDE: "revoked",
    ConsentState.NEVER_GRANTED: "none",
    ConsentState.ERASED: "none",
}
"""``consent_status.status``: the table's words for ``ledger.status.consent_state``."""


def _status_rows(
    state: SubscriberState,
    digest: Digest,
    updated_at: datetime,
    phone_wide: SubscriberState | None = None,
) -> list[tuple[Any, ...]]:
    """``state``'s rows of ``consent_status``; ``phone_wide``: the number's state under
    brand "*", whose held STOPs deny this brand's campaigns too. While an opt-out
    awaits review every row says ``pending_review`` and names the first hold as
    GetConsent lists them: it said ``active`` where CanSend denied."""
    rows = []
    held = state.campaigns
    holds = [
        *state.pending_candidates(),
        *(phone_wide.pending_candidates() if phone_wide is not None else ()),
    ]
    hold_id = holds[0].event_id if holds else None
    for name, consent in sorted(digest.campaigns.items()):
        status = _STATUS_COLUMN[
            ConsentState.PENDING_REVIEW if holds else consent_state(digest, name)
        ]
        revocation = latest_revocation(digest, consent)
        grant = consent.grant
        # The times as the state's facts hold them (the instants the digest's marks
        # stand for), rather than made again from the marks' microseconds.
        revoked_id, revoked_at = None, None
        # While revoked, the opt-out that stands, as GetConsent names it: of one placed
        # later and one that said a later time, not always the latest by place.
        in_force = revocation_in_force(state, digest, name) if status == "revoked" else None
        if in_force is not None:
            revoked_id, revoked_at = str(in_force.event.event_id), in_force.at
        elif revocation is not None:
            fact = held[name].revocation if revocation is consent.revocation else None
            revoked_id = revocation.event_id
            revoked_at = (fact or state.brand_revocation).at  # type: ignore[union-attr]
        rows.append(
            (
                state.phone,
                state.brand,
                name,
                status,
                consent.tier if grant else None,
                grant.event_id if grant else None,
                held[name].grant.at if grant else None,  # type: ignore[union-attr]
                revoked_id,
                revoked_at,
                updated_at,
                hold_id,
            )
        )
    return rows


_CHANGES = """
SELECT page.recorded_at, p.partition, page."offset", page.payload, p.next_offset
FROM projection_offset p
LEFT JOIN LATERAL (
    SELECT * FROM (
        (SELECT e.recorded_at, e."offset", e.payload FROM ledger_event_copy e
         WHERE e.stream = 'subscribers' AND e.brand = $1 AND e.partition = p.partition
           AND e."offset" >= coalesce(
               (SELECT a.o FROM unnest($2::integer[], $3::bigint[]) AS a(p, o)
                WHERE a.p = p.partition),
               0)
           AND ($5::text IS NULL OR e.campaign IS NULL OR e.campaign = $5
                OR e.event_type IN ('ConsentRevoked', 'RevocationCandidateFlagged',
                                    'RevocationCandidateResolved'))
           AND ($6::text[] IS NULL OR e.event_type = ANY($6::text[]))
         ORDER BY e."offset"
         LIMIT $4)
        UNION ALL
        (SELECT e.recorded_at, e."offset", e.payload FROM ledger_event_copy e
         WHERE e.stream = 'subscribers' AND e.brand = '*' AND e.partition = p.partition
           AND e."offset" >= coalesce(
               (SELECT a.o FROM unnest($2::integer[], $3::bigint[]) AS a(p, o)
                WHERE a.p = p.partition),
               0)
           AND e.event_type IN ('RevocationCandidateFlagged', 'RevocationCandidateResolved')
           AND ($6::text[] IS NULL OR e.event_type = ANY($6::text[]))
         ORDER BY e."offset"
         LIMIT $4)
    ) either
    ORDER BY either."offset"
    LIMIT $4
) page ON true
WHERE p.stream = 'subscribers'
ORDER BY p.partition, page."offset"
"""
"""Per partition the view knows, the first ``$4`` wanted events of brand ``$1`` from
the offset ``$2``/``$3`` give it (index ``ledger_event_copy_changes``); with a
campaign ``$5``, those naming it or none, every opt-out of the brand (under the
revoke-all rule an opt-out of any campaign ends this one's consent), and every
held opt-out and its resolution (a hold denies every campaign of the brand). And
the holds of brand "*" and their resolutions: an opt-out that reached a number no
campaign sends from denies every brand's sends to its phone until resolved. One
statement, so one snapshot: the rows of a partition it sees are the events the
view had applied up to some offset, as every transaction that adds some also
moves the partition's position, under that position's row lock. A partition with
no such event gives one row with no event, for its position."""


_FOLD_CHUNK = 128
"""Subscribers digested between two turns of the event loop, during which a
statement in flight (the event copies) moves on: a few milliseconds of Python."""

_WRITE = {
    "event_copy": _INSERT_EVENTS,
    "subscriber_state": _UPSERT_STATES,
    "consent_status": _UPSERT_STATUSES,
}
_COPY = {
    "event_copy": ("ledger_event_copy", _EVENT_COLUMNS),
    "subscriber_state": ("subscriber_state", tuple(_STATE_COLUMNS.split(", "))),
    "consent_status": ("consent_status", tuple(c.strip() for c in _STATUS_COLUMNS.split(","))),
}
_COPY_AT = 100
"""New rows (``_Writes.send``) go in by ``COPY`` from this many: it skips what the
statements do per row for a key that may exist (the conflict's check, the array's
parsing), but costs a round trip more, which a few rows do not pay back."""


_ROWS_CHUNK = 512
"""Subscribers whose state and status rows go to PostgreSQL in one statement while
the fold digests the next ones: PostgreSQL writes the batch's rows while Python
makes the rest, instead of after all of them."""


class _Writes:
    """How one batch's rows reach a table: one statement, the rows as one array.

    ``send`` queues a statement and returns at once: the statements run one after
    another on the batch's connection (which runs one at a time) while the caller
    goes on with its Python; ``drain`` waits for all of them. A statement that fails
    fails every one queued after it, unsent, and ``drain`` raises its error."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self._last: asyncio.Future[None] | None = None

    async def write(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        self.send(table, rows)
        await self.drain()

    def send(self, table: str, rows: list[tuple[Any, ...]], *, new: bool = False) -> None:
        """Queue ``rows`` for ``table``; ``new``: rows no row of the table has the key
        of, which go in by ``COPY`` when there are enough of them."""
        if rows:
            copy = new and len(rows) >= _COPY_AT
            self._last = asyncio.ensure_future(self._after(self._last, table, rows, copy))

    async def _after(
        self,
        previous: asyncio.Future[None] | None,
        table: str,
        rows: list[tuple[Any, ...]],
        copy: bool,
    ) -> None:
        if previous is not None:
            await previous
        if copy:
            name, columns = _COPY[table]
            await self.conn.copy_records_to_table(name, records=rows, columns=columns)
        else:
            await self.conn.execute(_WRITE[table], rows)

    async def drain(self) -> None:
        """Wait until no statement sent is on the connection; raise the first error."""
        last = await self.settle()
        if last is not None:
            last.result()

    async def settle(self) -> asyncio.Future[None] | None:
        """Wait until no statement sent is on the connection, and return the last
        (its error, if any, is the first statement's that failed)."""
        last, self._last = self._last, None
        if last is not None:
            # Every statement waits for the one before it: the last one's end is all
            # of theirs. Waited on, not awaited: a cancelled caller must still not
            # leave with a statement on the connection.
            await asyncio.wait([last])
            last.exception()  # taken: the caller's own error is the one it raises
        return last


class _SubscriberRows:
    """Some subscribers' state and status rows, those of states already stored
    apart from the new ones (``_Writes.send``'s ``new``)."""

    def __init__(self) -> None:
        self.count = 0
        self.states: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]] = ([], [])
        self.statuses: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]] = ([], [])

    def add(self, stored: bool, state: tuple[Any, ...], statuses: list[tuple[Any, ...]]) -> None:
        self.count += 1
        self.states[stored].append(state)
        self.statuses[stored].extend(statuses)

    def send(self, writes: _Writes) -> None:
        writes.send("subscriber_state", self.states[False], new=True)
        writes.send("subscriber_state", self.states[True])
        writes.send("consent_status", self.statuses[False], new=True)
        writes.send("consent_status", self.statuses[True])


class _Take(NamedTuple):
    """``take_request``'s call: ``_TAKE_REQUEST``'s parameters but the last."""

    brand: str
    request_id: str
    fingerprint: str
    ids: list[uuid.UUID]
    phone: str | None
    message_id: str | None
    past_claims: bool
    content: str | None


def _message_order(take: _Take) -> tuple[str, str, str]:
    return (take.brand, take.phone or "", take.message_id or "")


def _request_order(take: _Take) -> tuple[str, str]:
    return (take.brand, take.request_id)


def _request_taken(row: asyncpg.Record) -> RequestTaken:
    sent_as, claimed_by = row["sent_as"], row["claimed_by"]
    return RequestTaken(
        None if row["fingerprint"] is None else _request_use(row),
        row["taken"],
        None if sent_as is None else str(sent_as),
        None if claimed_by is None else str(claimed_by),
        row["claimed_content"],
    )


def _request_use(row: asyncpg.Record) -> RequestUse:
    return RequestUse(row["fingerprint"], tuple(str(i) for i in row["event_ids"]))


def _event_row(stream: Stream, recorded: Recorded, payload: bytes) -> tuple[Any, ...]:
    event = recorded.event
    phone = event.phone if isinstance(event, SubscriberEvent) else None
    return (
        event.event_id,
        stream.value,
        recorded.position.partition,
        recorded.position.offset,
        event.EVENT_TYPE,
        phone,
        event.brand,  # type: ignore[attr-defined]
        getattr(event, "campaign", None),
        event.occurred_at,
        recorded.recorded_at,
        payload,
    )


class _FactBytes:
    """Each fact's encoding, made once per batch: a new event's is its event copy's
    payload, a loaded one's comes out of its row's snapshot, and every snapshot
    written is joined from them (``join_snapshot``) instead of encoded again.

    Keyed by the event object, which a fact and the ``Recorded`` it came from share;
    the entry holds that object, so its id cannot be reused while it is kept."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[Recorded, bytes]] = {}

    def remember(self, recorded: Recorded, data: bytes) -> None:
        if not recorded.extra:  # a snapshot's facts carry no extra: else not the same bytes
            self._known[id(recorded.event)] = (recorded, data)

    def of(self, fact: Fact[Any]) -> bytes:
        hit = self._known.get(id(fact.event))
        if hit is not None:
            known = hit[0]
            # A fact folded from a Recorded shares its position and time objects:
            # the identity answers before the dataclass's equality (Python) runs.
            if (
                known.event is fact.event
                and (known.position is fact.position or known.position == fact.position)
                and known.recorded_at == fact.recorded_at
            ):
                return hit[1]
        recorded = fact.as_recorded()
        data = encode_recorded(recorded)
        self._known[id(fact.event)] = (recorded, data)
        return data

    def load_state(self, phone: str, brand: str, snapshot: bytes) -> SubscriberState:
        """A row's state, as ``_load_state`` folds it, its facts' bytes remembered."""
        facts = []
        for data in split_snapshot(snapshot):
            fact = decode_recorded(data)
            self._known[id(fact.event)] = (fact, data)
            facts.append(fact)
        return fold(facts, new_state(phone, brand))

    def snapshot(self, state: SubscriberState) -> bytes:
        return join_snapshot([self.of(fact) for fact in retained(state)])


class PostgresConsentView(ConsentView):
    """The view on an ``asyncpg`` pool the caller owns (and closes)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        reads: asyncpg.Pool | None = None,
        state_cache_size: int = 200_000,
        timeout: float | None = None,
    ) -> None:
        """``reads``, if given, serves the single statements calls wait on (CanSend's
        digests, and the lookups and request claims of a write): a pool made by
        ``read_pool``, whose connections skip the reset round trip on release.
        ``timeout`` bounds every read a call waits on (``bounded``); the projector's
        writes are not bounded, as a batch may take long and nobody waits on it."""
        self._pool = pool
        self._reads = reads or pool
        self._timeout = timeout
        # Decoded states by (phone, brand), with the row's last_offset as their version.
        # A row's last_offset grows with every event folded into it, so an entry with
        # the offset the row has now is exactly what decoding the row would give: the
        # cache only saves the decode and fold (most of a read's CPU), never a read.
        self._states: OrderedDict[tuple[str, str], tuple[int, SubscriberState]] = OrderedDict()
        self._state_cache_size = state_cache_size
        self._writes: set[asyncio.Future[None]] = set()
        self._takes = Coalesced(self._take_one, self._take_many, bound=timeout)

    async def apply(
        self, stream: Stream, batch: Sequence[Recorded], *, known: Mapping[int, int] | None = None
    ) -> None:
        if not batch:
            return
        for recorded in batch:
            if Stream.of(recorded.event) is not stream:
                raise ValueError(
                    f"{type(recorded.event).__name__} does not belong to {stream.value}"
                )
        # A cancelled caller (a shutdown, a lost partition) must not tear the batch's
        # transaction mid-protocol: asyncpg can then wait forever for the server to
        # confirm the cancel. The write runs to its commit or rollback on its own;
        # the caller is released at once and a restart finds one or the other.
        write = asyncio.ensure_future(self._apply_in_transaction(stream, batch, known))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        await asyncio.shield(write)

    async def settle(self) -> None:
        """Wait for writes whose callers were cancelled to commit or roll back."""
        await asyncio.gather(*self._writes, return_exceptions=True)

    async def _apply_in_transaction(
        self, stream: Stream, batch: Sequence[Recorded], known: Mapping[int, int] | None
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._apply(conn, stream, batch, known)

    async def _apply(
        self,
        conn: asyncpg.Connection,
        stream: Stream,
        batch: Sequence[Recorded],
        follower: Mapping[int, int] | None = None,
    ) -> None:
        partitions = sorted({r.position.partition for r in batch})
        rows = await conn.fetch(_LOCK_POSITIONS, stream.value, partitions)
        if len(rows) < len(partitions):  # a partition's first batch: its row is made once
            await conn.execute(_CLAIM_POSITIONS, stream.value, partitions)
            rows = await conn.fetch(_LOCK_POSITIONS, stream.value, partitions)
        next_offsets: dict[int, int] = {row["partition"]: row["next_offset"] for row in rows}
        refuse_if_rebuilt(stream, batch, next_offsets, follower)
        fresh: list[Recorded] = []
        for recorded in batch:
            partition, offset = recorded.position.partition, recorded.position.offset
            if offset < next_offsets[partition]:
                continue
            next_offsets[partition] = offset + 1
            fresh.append(recorded)
        if not fresh:
            return

        writes = _Writes(conn)
        known = {
            row["event_id"]
            for row in await conn.fetch(_KNOWN_EVENTS, [r.event.event_id for r in fresh])
        }
        new: list[Recorded] = []
        for recorded in fresh:
            if recorded.event.event_id in known:
                continue  # the same fact written twice (a retried append): fold it once
            known.add(recorded.event.event_id)
            new.append(recorded)
        new = await self._first_uses(writes, new)
        await self._restore_keys(conn, new)

        if new:
            encoded = _FactBytes()
            # Inserted in recorded order: the order in which the event copies' trigger
            # (migration 0007) gives the batch's flagged replies their places in the
            # review queue, at the commit.
            in_recorded_order = sorted(new, key=lambda r: (r.recorded_at, r.event.event_id))
            rows = []
            for recorded in in_recorded_order:
                payload = encode_recorded(recorded)
                encoded.remember(recorded, payload)
                rows.append(_event_row(stream, recorded, payload))
            if stream is Stream.SUBSCRIBERS:
                await self._fold_subscribers(writes, new, encoded, rows)
                await self._mark_resolved(conn, new)
            else:
                await writes.write("event_copy", rows)
                await self._fold_campaigns(conn, new)
        await self._write_positions(
            conn, stream, {p: next_offsets[p] for p in {r.position.partition for r in fresh}}
        )

    @staticmethod
    async def _first_uses(writes: _Writes, new: list[Recorded]) -> list[Recorded]:
        """``new`` without the events that are no facts: those of a request whose id
        another request holds (``claim_request``), and a ``MessageSent`` whose
        provider message id an earlier one recorded (``message_use``). Ids still
        free go to the first event of the batch that uses them."""
        # Per request id, per fingerprint in the order the batch first uses it: the
        # first inserts the row when the id is free, the holder's adds its ids.
        requests: dict[tuple[str, str], dict[str, list[uuid.UUID]]] = {}
        for r in new:
            e = r.event
            if e.request_id:
                uses = requests.setdefault((getattr(e, "brand", ""), e.request_id), {})
                uses.setdefault(e.request_fingerprint, []).append(e.event_id)
        conn = writes.conn
        if requests:
            keys = sorted(requests)
            claims = [
                (key, n == 0, fp, ids)
                for key in keys
                for n, (fp, ids) in enumerate(requests[key].items())
            ]
            await conn.execute(
                _USE_REQUESTS, [(*k, fp, ids) for k, first, fp, ids in claims if first]
            )
            again = [(*k, fp, ids) for k, first, fp, ids in claims if not first]
            if again:
                await conn.execute(_USE_REQUESTS_AGAIN, again)
            rows = await conn.fetch(_REQUEST_HOLDERS, [k[0] for k in keys], [k[1] for k in keys])
            holder = {(row["brand"], row["request_id"]): row["fingerprint"] for row in rows}
            new = [
                r
                for r in new
                if not r.event.request_id
                or holder[getattr(r.event, "brand", ""), r.event.request_id]
                == r.event.request_fingerprint
            ]
        sent = {
            (e.brand, e.phone, e.message_id): e.event_id
            for e in reversed([r.event for r in new])
            if isinstance(e, MessageSent)
        }  # reversed: the first of a batch's sends of one message stays
        if not sent:
            return new
        messages = sorted(sent)
        rows = await conn.fetch(_USE_MESSAGES, [(*m, sent[m]) for m in messages])
        first = {(row["brand"], row["phone"], row["message_id"]): row["event_id"] for row in rows}
        return [
            r
            for r in new
            if not isinstance(r.event, MessageSent)
            or first[r.event.brand, r.event.phone, r.event.message_id] == r.event.event_id
        ]

    @staticmethod
    async def _restore_keys(conn: asyncpg.Connection, new: list[Recorded]) -> None:
        """Take the keys writes took for ``new`` where they are free
        (``ledger.view_keys``): a view dropped and filled again from the ledger lost
        them. Without an inbound text's message key a gateway's redelivery of it under
        a new request id was recorded again, owing its reply again; without an opt-out
        stamped ahead's note, a consent stated before it was recorded, not refused.

        A message key names the text's record alone, which names its request and so
        its other facts: one batch may end before them."""
        rows: dict[tuple[str, str], tuple[str, uuid.UUID]] = {}
        for r in new:
            e = r.event
            # The first in ledger order takes a key, as a write does.
            if isinstance(e, InboundMessageReceived) and (key := restorable_key(e)):
                rows.setdefault((e.brand, key[0]), (key[1], e.event_id))
            elif isinstance(e, ConsentRevoked) and e.stated_at is not None:
                noted = (e.brand, stated_ahead_key(e.phone))
                rows.setdefault(noted, (e.request_fingerprint, e.event_id))
        if rows:
            taken = [(*k, *v) for k, v in rows.items()]
            columns = [list(column) for column in zip(*taken, strict=True)]
            await conn.execute(_RESTORE_KEYS, *columns)

    async def _fold_subscribers(
        self,
        writes: _Writes,
        new: list[Recorded],
        encoded: _FactBytes,
        event_rows: list[tuple[Any, ...]],
    ) -> None:
        """Write the batch's event copies (``event_rows``) and fold its subscribers.

        The event copies are the batch's costliest statement for PostgreSQL (every
        index of ``ledger_event_copy``), and the fold its costliest work in Python,
        and neither needs the other: so the copies go in while the fold runs,
        which hands the event loop to them every ``_FOLD_CHUNK`` subscribers, and
        so do the state and status rows of every ``_ROWS_CHUNK`` subscribers
        digested, while the next are digested. The states are read (and their rows
        locked) first, as the fold needs them."""
        conn = writes.conn
        written = {(r.event.phone, r.event.brand) for r in new}  # type: ignore[attr-defined]
        # Each phone's state under brand "*" is read too: its held STOPs deny every
        # brand, and each brand's status rows say so.
        loaded = written | {(phone, ANY_BRAND) for phone, _ in written}
        states: dict[tuple[str, str], SubscriberState] = {}
        # The retained facts need not include the newest event (a late fact that
        # changed nothing), so what the row has seen is kept beside the snapshot.
        last_offset: dict[tuple[str, str], int] = {}
        updated: dict[tuple[str, str], datetime] = {}
        rows_read = await conn.fetch(_LOAD_STATES, [k[0] for k in loaded], [k[1] for k in loaded])
        wide = sorted({phone for phone, brand in written if brand == ANY_BRAND})
        if wide:
            rows_read += await conn.fetch(_LOAD_PHONES_STATES, wide, ANY_BRAND)
        for row in rows_read:
            key = (row["phone"], row["brand"])
            states[key] = encoded.load_state(*key, row["snapshot"])
            last_offset[key] = row["last_offset"]
            updated[key] = row["updated_at"]
            if row["phone"] in wide:
                written.add(key)
        keys = sorted(written)
        stored = set(states)
        # No row has the key of these event copies (_KNOWN_EVENTS found none under
        # the partitions' locks, and an event's partition is its phone's), nor of
        # the states _LOAD_STATES found none of, nor of their status rows (written
        # only with their state): those go in as new rows. Were one there anyway (a
        # topic repartitioned), COPY fails the batch, and the projector's next try
        # finds the row and upserts it.
        writes.send("event_copy", event_rows, new=True)
        try:
            for recorded in new:
                event = recorded.event
                assert isinstance(event, SubscriberEvent)
                key = (event.phone, event.brand)
                state = states.get(key) or new_state(event.phone, event.brand)
                states[key] = apply(state, recorded)
                offset, at = recorded.position.offset, recorded.recorded_at
                if last_offset.get(key, -1) < offset:
                    last_offset[key] = offset
                seen = updated.get(key)
                if seen is None or seen < at:
                    updated[key] = at
            rows = _SubscriberRows()
            for n, key in enumerate(keys):
                if n % _FOLD_CHUNK == 0:
                    if rows.count >= _ROWS_CHUNK:
                        rows.send(writes)
                        rows = _SubscriberRows()
                    await self._let_writes_run(conn)
                state = states[key]
                digest = digest_of(state)
                at = updated[key]
                rows.add(
                    key in stored,
                    (
                        key[0],
                        key[1],
                        encoded.snapshot(state),
                        last_offset[key],
                        at,
                        encode_digest(digest),
                    ),
                    _status_rows(
                        state,
                        digest,
                        at,
                        None if key[1] == ANY_BRAND else states.get((key[0], ANY_BRAND)),
                    ),
                )
            rows.send(writes)
        except BaseException:
            # Never past this with a statement still on the connection; the fold's
            # error is the one raised.
            await writes.settle()
            raise
        await writes.drain()

    async def _let_writes_run(self, conn: asyncpg.Connection) -> None:
        """A turn of the event loop for the statement in flight on ``conn``."""
        await asyncio.sleep(0)

    @staticmethod
    async def _mark_resolved(conn: asyncpg.Connection, new: list[Recorded]) -> None:
        """Leave the replies the batch resolves out of the review queue's reads. After
        the subscriber rows' locks, so placing the batch's replies now takes the
        counter's lock last, as at the commit."""
        resolved = [
            r.event.candidate_event_id
            for r in new
            if isinstance(r.event, RevocationCandidateResolved) and r.event.lifts_hold
        ]
        if not resolved:
            return
        if any(isinstance(r.event, RevocationCandidateFlagged) for r in new):
            await conn.execute(_PLACE_NOW)
        await conn.execute(_MARK_RESOLVED, resolved)

    async def _fold_campaigns(self, conn: asyncpg.Connection, new: list[Recorded]) -> None:
        events: list[tuple[CampaignEvent, Recorded]] = []
        for recorded in new:
            assert isinstance(recorded.event, CampaignEvent)
            events.append((recorded.event, recorded))
        await conn.executemany(
            _INSERT_VERSION,
            [
                (
                    e.brand,
                    e.campaign,
                    e.event_id,
                    r.position.partition,
                    r.position.offset,
                    e.occurred_at,
                    r.recorded_at,
                    encode_recorded(r),
                )
                for e, r in events
            ],
        )
        keys = sorted({(e.brand, e.campaign) for e, _ in events})
        brands, campaigns = [k[0] for k in keys], [k[1] for k in keys]
        versions: dict[tuple[str, str], list[Recorded]] = {}
        for row in await conn.fetch(_LOAD_VERSIONS, brands, campaigns):
            versions.setdefault((row["brand"], row["campaign"]), []).append(
                decode_recorded(row["payload"])
            )
        await conn.execute(_DELETE_NUMBERS, brands, campaigns)
        numbers = []
        for brand, campaign in keys:
            history = fold_campaign(versions.get((brand, campaign), []))
            current = history.current()
            if current is None:
                continue
            since = history.versions[-1].at
            for number in sorted(set(current.policy.sender_numbers)):
                numbers.append((number, brand, campaign, since))
        await conn.executemany(_INSERT_NUMBER, numbers)

    async def _write_positions(
        self, conn: asyncpg.Connection, stream: Stream, offsets: dict[int, int]
    ) -> None:
        partitions = sorted(offsets)
        await conn.execute(
            _WRITE_POSITIONS, stream.value, partitions, [offsets[p] for p in partitions]
        )

    async def close(self) -> None:
        """Let in-flight writes finish; the pool is the caller's to close."""
        await self.settle()

    @bounded
    async def positions(self, stream: Stream) -> dict[int, int]:
        rows = await self._reads.fetch(
            "SELECT partition, next_offset FROM projection_offset WHERE stream = $1", stream.value
        )
        return {row["partition"]: row["next_offset"] for row in rows}

    @bounded
    async def subscriber_states(
        self, brand: str, phones: Sequence[str]
    ) -> dict[str, SubscriberState]:
        rows = await self._reads.fetch(
            "SELECT phone, last_offset, snapshot FROM subscriber_state"
            " WHERE brand = $1 AND phone = ANY($2::text[])",
            brand,
            list(phones),
        )
        cache = self._states
        found: dict[str, SubscriberState] = {}
        for row in rows:
            key = (row["phone"], brand)
            cached = cache.get(key)
            if cached is not None and cached[0] == row["last_offset"]:
                cache.move_to_end(key)
                found[key[0]] = cached[1]
                continue
            state = _load_state(key[0], brand, row["snapshot"])
            cache[key] = (row["last_offset"], state)
            found[key[0]] = state
        while len(cache) > self._state_cache_size:
            cache.popitem(last=False)
        return {
            phone: found.get(phone) or SubscriberState(phone=phone, brand=brand) for phone in phones
        }

    @bounded
    async def digests(self, brand: str, phones: Sequence[str]) -> dict[str, Digest]:
        # The phone-wide rows (ANY_BRAND) come in the same query: there are few, and
        # a second query per read would double CanSend's round trips.
        rows = await self._reads.fetch(_READ_DIGESTS, brand, ANY_BRAND, list(phones), DIGEST_FORMAT)
        found: dict[str, Digest] = {}
        wide: list[tuple[str, Digest]] = []
        unreadable: list[str] = []
        for phone, row_brand, data, snapshot in rows:
            try:
                digest = stored_digest(phone, row_brand, data, snapshot)
            except Exception:
                log.exception("the stored digest of %s towards %s cannot be read", phone, row_brand)
                unreadable.append(phone)
                continue
            if row_brand == brand:
                found[phone] = digest
            else:
                wide.append((phone, digest))
        for phone, phone_wide in wide:
            merged = with_phone_wide(found.get(phone), phone_wide)
            if merged is not None:
                found[phone] = merged
        if unreadable:
            bad = set(unreadable)
            for phone in bad:
                found.pop(phone, None)
            raise UnreadableDigests(found, [p for p in dict.fromkeys(phones) if p in bad])
        return found

    @bounded
    async def campaign_history(self, brand: str, campaign: str) -> CampaignHistory:
        # The brand's own settings (BrandPolicySet, kept under the campaign key
        # BRAND_SETTINGS) come in the same query: they apply to every campaign of it.
        rows = await self._reads.fetch(
            "SELECT payload FROM campaign_version WHERE brand = $1 AND campaign IN ($2, $3)"
            ' ORDER BY partition, "offset"',
            brand,
            campaign,
            BRAND_SETTINGS,
        )
        return fold_campaign(decode_recorded(row["payload"]) for row in rows)

    @bounded
    async def campaign_names(self, brand: str) -> list[str]:
        rows = await self._reads.fetch(
            "SELECT DISTINCT campaign FROM campaign_version WHERE brand = $1 AND campaign <> $2"
            " ORDER BY campaign",
            brand,
            BRAND_SETTINGS,
        )
        return [row["campaign"] for row in rows]

    @bounded
    async def brand_names(self) -> list[str]:
        rows = await self._reads.fetch("SELECT DISTINCT brand FROM campaign_version ORDER BY brand")
        return [row["brand"] for row in rows]

    @bounded
    async def campaign_for_number(self, to_phone: str) -> tuple[str, str] | None:
        claims: dict[tuple[str, str], list[bytes]] = {}
        for row in await self._reads.fetch(_NUMBER_CLAIMS, to_phone):
            claims.setdefault((row["brand"], row["campaign"]), []).append(row["payload"])
        if len(claims) <= 1:  # the usual case: nothing to decode
            return next(iter(claims), None)
        histories = {
            key: fold_campaign(decode_recorded(payload) for payload in payloads)
            for key, payloads in claims.items()
        }
        return sender_number_holder(histories, to_phone)

    @bounded
    async def history(self, phone: str, brand: str | None = None) -> list[Recorded]:
        rows = await self._pool.fetch(
            "SELECT payload FROM ledger_event_copy"
            " WHERE phone = $1 AND ($2::text IS NULL OR brand = $2)"
            ' ORDER BY partition, "offset"',
            phone,
            brand,
        )
        return [decode_recorded(row["payload"]) for row in rows]

    @bounded
    async def find_event(self, event_id: str) -> Recorded | None:
        try:
            key = uuid.UUID(str(event_id))
        except ValueError:
            return None
        payload = await self._reads.fetchval(
            "SELECT payload FROM ledger_event_copy WHERE event_id = $1", key
        )
        return None if payload is None else decode_recorded(payload)

    @bounded
    async def request_use(self, brand: str, request_id: str) -> RequestUse | None:
        row = await self._reads.fetchrow(
            "SELECT fingerprint, event_ids FROM request_use WHERE brand = $1 AND request_id = $2",
            brand,
            request_id,
        )
        return None if row is None else _request_use(row)

    @bounded
    async def claim_request(
        self, brand: str, request_id: str, fingerprint: str, event_ids: Sequence[str]
    ) -> RequestUse:
        ids = [uuid.UUID(i) for i in event_ids]
        while True:
            row = await self._reads.fetchrow(_CLAIM_REQUEST, brand, request_id, fingerprint, ids)
            if row is not None:
                return _request_use(row)

    @bounded
    async def take_request(
        self,
        brand: str,
        request_id: str,
        fingerprint: str,
        event_ids: Sequence[str],
        message: tuple[str, str] | None = None,
        *,
        content: str | None = None,
        past_claims: bool = False,
    ) -> RequestTaken:
        ids = [uuid.UUID(i) for i in event_ids]
        phone, message_id = message or (None, None)
        return await self._takes(
            _Take(brand, request_id, fingerprint, ids, phone, message_id, past_claims, content)
        )

    async def _take_one(self, take: _Take) -> RequestTaken:
        while True:
            row = await self._reads.fetchrow(_TAKE_REQUEST, *take, 0, 0)
            if row is not None:
                return _request_taken(row)

    async def _take_many(self, takes: Sequence[_Take]) -> list[RequestTaken]:
        """The takes of writes in flight at once, in one round trip and one transaction
        (asyncpg runs the statements of ``fetchmany`` in one): one commit, one WAL flush,
        where each alone paid its own. In key order, so that two batches (of two
        instances) holding the same request ids wait for each other's rows in turn
        rather than deadlock; a batch that fails anyway is run again call by call.

        The rows go in one total order: every message claim (of the sends), by
        message, then every request id, by id, as a take alone claims its message
        before its request id. A send's take whole in the batch locked a request id
        before the next send's message: two batches, each with a send under the
        request id of another write in the other (a client reusing an id), took
        them in opposite orders and deadlocked, as did sends of the same messages in
        request id order (3135bc1)."""
        sends = sorted(
            (i for i, t in enumerate(takes) if t.phone is not None),
            key=lambda i: _message_order(takes[i]),
        )
        order = sorted(range(len(takes)), key=lambda i: _request_order(takes[i]))
        parts = [(*takes[i], i, 1) for i in sends] + [(*takes[i], i, 2) for i in order]
        rows = await self._reads.fetchmany(_TAKE_REQUEST, parts)
        found = {row["call"]: _request_taken(row) for row in rows}
        # A call without a row ran into a claim committed after its statement's
        # snapshot, as a single statement can: it asks again, alone.
        return [found[i] if i in found else await self._take_one(t) for i, t in enumerate(takes)]

    @bounded
    async def claim_message(
        self, brand: str, phone: str, message_id: str, event_id: str, content: str | None = None
    ) -> MessageClaim | None:
        row = await self._reads.fetchrow(
            _CLAIM_MESSAGE, brand, phone, message_id, uuid.UUID(str(event_id)), content
        )
        return None if row is None else MessageClaim(str(row["event_id"]), row["content"])

    @bounded_bulk
    async def claim_messages(
        self, brand: str, claims: Sequence[tuple[str, str, str, str | None]]
    ) -> dict[tuple[str, str], MessageClaim]:
        if not claims:
            return {}
        pending = list({(c[0], c[1]): c for c in reversed(claims)}.values())
        held: dict[tuple[str, str], MessageClaim] = {}
        while pending:
            rows = await fetch_bulk(
                self._reads,
                self._timeout,
                _CLAIM_MESSAGES,
                brand,
                [c[0] for c in pending],
                [c[1] for c in pending],
                [uuid.UUID(str(c[2])) for c in pending],
                [c[3] for c in pending],
            )
            for row in rows:
                key = (row["phone"], row["message_id"])
                held[key] = MessageClaim(str(row["event_id"]), row["content"])
            if any((h := held.get((c[0], c[1]))) and h.refuses(c[2], c[3]) for c in pending):
                return held  # none was made: the caller refuses the batch
            pending = [c for c in pending if (c[0], c[1]) not in held]
        return held

    @bounded
    async def message_claim_ages(
        self, brand: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[MessageClaim, float]]:
        if not keys:
            return {}
        rows = await self._reads.fetch(
            _MESSAGE_CLAIM_AGES, brand, [k[0] for k in keys], [k[1] for k in keys]
        )
        return {
            (row["phone"], row["message_id"]): (
                MessageClaim(str(row["event_id"]), row["content"]),
                row["age"],
            )
            for row in rows
        }

    @bounded
    async def take_over_message_claims(
        self,
        brand: str,
        claims: Sequence[tuple[str, str, str, str, str | None]],
        older_than_s: float,
    ) -> set[tuple[str, str]]:
        if not claims:
            return set()
        rows = await self._reads.fetch(
            _TAKE_OVER_MESSAGE_CLAIMS,
            brand,
            [c[0] for c in claims],
            [c[1] for c in claims],
            [uuid.UUID(str(c[2])) for c in claims],
            [uuid.UUID(str(c[3])) for c in claims],
            [c[4] for c in claims],
            older_than_s,
        )
        return {(row["phone"], row["message_id"]) for row in rows}

    @bounded
    async def release_claims(
        self,
        brand: str,
        request: tuple[str, str, Sequence[str]] | None,
        messages: Sequence[tuple[str, str, str]],
    ) -> None:
        request_id, fingerprint, event_ids = request or (None, None, ())
        await self._reads.fetchrow(
            _RELEASE_CLAIMS,
            brand,
            request_id,
            fingerprint,
            [uuid.UUID(str(i)) for i in event_ids],
            [m[0] for m in messages],
            [m[1] for m in messages],
            [uuid.UUID(str(m[2])) for m in messages],
        )

    @bounded_bulk
    async def request_uses(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], RequestUse]:
        if not keys:
            return {}
        rows = await fetch_bulk(
            self._reads, self._timeout, _REQUEST_USES_OF, [k[0] for k in keys], [k[1] for k in keys]
        )
        return {(row["brand"], row["request_id"]): _request_use(row) for row in rows}

    @bounded_bulk
    async def claim_requests(self, claims: Sequence[RequestClaim]) -> list[RequestUse]:
        uses: dict[tuple[str, str], RequestUse] = {}
        pending = list({(c.brand, c.request_id): c for c in reversed(claims)}.values())
        while pending:  # only claims of ids committed by others meanwhile come round again
            rows = await fetch_bulk(
                self._reads,
                self._timeout,
                _CLAIM_REQUESTS,
                [c.brand for c in pending],
                [c.request_id for c in pending],
                [c.fingerprint for c in pending],
                [",".join(str(uuid.UUID(i)) for i in c.event_ids) for c in pending],
            )
            for row in rows:
                if row["fingerprint"] is not None:
                    uses[(row["brand"], row["request_id"])] = _request_use(row)
            pending = [c for c in pending if (c.brand, c.request_id) not in uses]
        return [uses[(c.brand, c.request_id)] for c in claims]

    @bounded_bulk
    async def take_append_turns(
        self, keys: Sequence[tuple[str, str]], holder: str, lease_s: float
    ) -> list[AppendTurn]:
        turns: dict[tuple[str, str], AppendTurn] = {}
        pending = list(dict.fromkeys(keys))  # a row is taken at most once a statement
        while pending:  # only turns committed by others meanwhile come round again
            rows = await fetch_bulk(
                self._reads,
                self._timeout,
                _TAKE_APPEND_TURNS,
                [k[0] for k in pending],
                [k[1] for k in pending],
                uuid.UUID(holder),
                lease_s,
            )
            for row in rows:
                if row["turn"] is not None:
                    turns[(row["brand"], row["request_id"])] = AppendTurn(row["turn"])
            pending = [k for k in pending if k not in turns]
        return [turns[k] for k in keys]

    @bounded
    async def append_turn_holder(self, brand: str, request_id: str) -> str | None:
        holder = await self._reads.fetchval(
            "SELECT holder FROM append_turn WHERE brand = $1 AND request_id = $2 AND until > now()",
            brand,
            request_id,
        )
        return None if holder is None else str(holder)

    @bounded_bulk
    async def end_append_turns(
        self, keys: Sequence[tuple[str, str]], holder: str, *, appended: bool
    ) -> None:
        if keys:
            await fetch_bulk(
                self._reads,
                self._timeout,
                _END_APPEND_TURNS,
                [k[0] for k in keys],
                [k[1] for k in keys],
                uuid.UUID(holder),
                appended,
            )

    async def prune_append_turns(self, kept_s: float) -> int:
        pruned = 0
        while True:
            n = await self._prune_append_turns(kept_s)
            pruned += n
            if n < _PRUNE_BATCH:
                return pruned

    @bounded_bulk
    async def _prune_append_turns(self, kept_s: float) -> int:
        (row,) = await fetch_bulk(
            self._reads, self._timeout, _PRUNE_APPEND_TURNS, kept_s, _PRUNE_BATCH
        )
        pruned: int = row["n"]
        return pruned

    @bounded_bulk
    async def known_events(self, event_ids: Sequence[str]) -> dict[str, Applied]:
        keys = []
        for i in event_ids:
            try:
                keys.append(uuid.UUID(str(i)))
            except ValueError:
                continue
        if not keys:
            return {}
        rows = await fetch_bulk(self._reads, self._timeout, _KNOWN_EVENTS, keys)
        return {
            str(row["event_id"]): Applied(Stream(row["stream"]), row["partition"], row["offset"])
            for row in rows
        }

    @bounded
    async def message_use(self, brand: str, phone: str, message_id: str) -> str | None:
        found = await self._reads.fetchval(
            "SELECT event_id FROM message_use WHERE brand = $1 AND phone = $2 AND message_id = $3",
            brand,
            phone,
            message_id,
        )
        return None if found is None else str(found)

    @bounded
    async def message_uses(
        self, brand: str, sends: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        if not sends:
            return {}
        rows = await self._reads.fetch(
            _BRAND_MESSAGE_USES, brand, [s[0] for s in sends], [s[1] for s in sends]
        )
        return {(row["phone"], row["message_id"]): str(row["event_id"]) for row in rows}

    @bounded
    async def find_events(self, event_ids: Sequence[str]) -> dict[str, Recorded]:
        keys = []
        for event_id in event_ids:
            with contextlib.suppress(ValueError):
                keys.append(uuid.UUID(str(event_id)))
        if not keys:
            return {}
        rows = await self._reads.fetch(_FIND_EVENTS, keys)
        return {str(row["event_id"]): decode_recorded(row["payload"]) for row in rows}

    @bounded
    async def flagged(self, brand: str, after: int = 0, limit: int | None = None) -> list[Flagged]:
        rows = await self._pool.fetch(_READ_FLAGGED, brand, after, limit)
        return [Flagged(row["position"], str(row["event_id"]), row["phone"]) for row in rows]

    async def open_flagged_times(self) -> list[datetime]:
        # flagged_reply_open (migration 0008) holds the unresolved replies apart.
        return [row["occurred_at"] for row in await self._pool.fetch(_OPEN_FLAGGED_TIMES)]

    @bounded
    async def changes(
        self,
        brand: str,
        after: Offsets,
        limit: int,
        *,
        campaign: str | None = None,
        types: Collection[str] | None = None,
    ) -> ChangesPage:
        partitions = sorted(after)
        rows = await self._pool.fetch(
            _CHANGES,
            brand,
            partitions,
            [after[p] for p in partitions],
            limit,
            campaign,
            None if types is None else sorted(types),
        )
        pages: dict[int, list[asyncpg.Record]] = {}
        positions: dict[int, int] = {}
        for row in rows:
            listed = pages.setdefault(row["partition"], [])
            positions[row["partition"]] = row["next_offset"]
            if row["payload"] is not None:
                listed.append(row)
        # on the rows, so that only the page's events are decoded
        page, through = page_of_changes(
            pages, positions, after, limit, lambda row: (row[0], row[1], row[2])
        )
        return ChangesPage([decode_recorded(row["payload"]) for row in page], through)

    @bounded
    async def sending_counts(
        self, brand: str, campaign: str | None, start: datetime, end: datetime
    ) -> SendingCounts:
        if campaign is None:
            row = await self._pool.fetchrow(_BRAND_COUNTS, brand, start, end)
        else:
            row = await self._pool.fetchrow(_CAMPAIGN_COUNTS, brand, start, end, campaign)
        return SendingCounts(row["sent"], row["opt_outs"], row["pending"])

    @asynccontextmanager
    async def campaign_writes(self, wait: float) -> AsyncIterator[None]:
        deadline = time.monotonic() + wait
        async with self._pool.acquire() as conn, conn.transaction():
            while not await conn.fetchval(_CAMPAIGN_TURN):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"another writer held the campaign writes' turn {wait} s")
                await asyncio.sleep(_TURN_POLL)
            yield

    async def reset(self) -> None:
        """Empty every projection table, for a rebuild from offset 0."""
        await self.settle()  # a write still in flight must not land after the truncate
        async with self._pool.acquire() as conn, conn.transaction():
            await self._empty(conn)

    async def _empty(self, conn: asyncpg.Connection) -> None:
        await conn.execute(f"TRUNCATE {', '.join(PROJECTION_TABLES)}")
        # In-memory copies of the view (DigestReplica) load afresh when it moves.
        await conn.execute("UPDATE projection_epoch SET epoch = epoch + 1")
        self._states.clear()

    async def begin_rebuild(self) -> bool:
        await self.settle()
        async with self._pool.acquire() as conn, conn.transaction():
            # Locked, so two rebuilds begun at once do not both empty the view.
            await conn.execute("LOCK TABLE projection_rebuild IN EXCLUSIVE MODE")
            if await conn.fetchval("SELECT started_at FROM projection_rebuild") is not None:
                return True
            await self._empty(conn)
            await conn.execute("INSERT INTO projection_rebuild (started_at) VALUES (now())")
            return False

    async def finish_rebuild(self) -> None:
        await self._pool.execute("DELETE FROM projection_rebuild")

    async def table_dump(self, table: str) -> list[tuple[Any, ...]]:
        """Every row of one projection table in key order (for rebuild checks)."""
        if table not in PROJECTION_TABLES:
            raise ValueError(f"{table} is not a projection table")
        order = {
            "subscriber_state": "phone, brand",
            "consent_status": "phone, brand, campaign",
            "ledger_event_copy": "event_id",
            "campaign_version": "brand, campaign, event_id",
            "sender_number": "number, brand, campaign",
            "projection_offset": "stream, partition",
            "flagged_reply": "event_id",
            "message_use": "brand, phone, message_id",
        }[table]
        # A reply's place in the review queue is the order this view applied it in,
        # which a rebuild need not repeat (and which never goes back): left out.
        columns = "event_id, brand, phone, resolved" if table == "flagged_reply" else "*"
        rows = await self._pool.fetch(f"SELECT {columns} FROM {table} ORDER BY {order}")
        return [tuple(row.values()) for row in rows]
