"""The change stream (``WatchConsentChanges``): a brand's changes of consent, from
a resume token on and then as the view applies them.

A resume token is a consistency token of the subscriber stream: per partition,
the offset of the next event the reader has not been given. The view lists, per
partition, a brand's events from those offsets in offset order
(``ConsentView.changes``), and applies each partition in offset order, so a
reader that resumes from the token of the last change it got misses none and
gets none twice. Nothing is counted or stored per reader.

Pull, not push: a page is read from the view only once every change of the one
before has been taken, and the gRPC server takes the next only when the client's
flow-control window has room. A reader that stops reading costs one page, however
much is written meanwhile. Once caught up, a reader waits for the view's applied
positions (as the freshness guard last saw them) to move, and reads again then;
or after ``REQUERY`` seconds whatever they say.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence

from ledger.events import (
    AgeVerified,
    ConsentGranted,
    ConsentReconfirmed,
    ConsentResumed,
    ConsentRevoked,
    InboundMessageReceived,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    SubjectErased,
    SubscriberLocated,
)
from ledger.ports import ConsentView, ConsistencyToken, Stream
from services.freshness import FreshnessGuard

CONSENT_CHANGES = frozenset(
    cls.EVENT_TYPE
    for cls in (
        ConsentGranted,
        ConsentRevoked,
        ConsentReconfirmed,
        ConsentResumed,
        RevocationCandidateFlagged,
        RevocationCandidateResolved,
        AgeVerified,
        SubscriberLocated,
        SubjectErased,
    )
)
"""What a watcher is sent by default: the facts that change whether a number may
be texted (an erasure ends every consent before it, as CanSend reads it). Messages
sent and received are asked for apart (``MESSAGES``)."""
MESSAGES = frozenset(cls.EVENT_TYPE for cls in (MessageSent, InboundMessageReceived))

PAGE = 100
"""Changes read from the view at a time, for one watcher."""
IDLE_POLL = 0.1
"""Seconds between looks at the view's applied positions while caught up."""
REQUERY = 2.0
"""Seconds a caught-up watcher waits at most before it reads the view again."""


def resume_after(token: ConsistencyToken) -> dict[int, int]:
    """Per subscriber partition, the offset a token resumes from; the parts of other
    streams (a write's token names campaign partitions too) say nothing here."""
    return {p: o for (stream, p), o in token.offsets.items() if stream is Stream.SUBSCRIBERS}


def resume_token(after: Mapping[int, int]) -> ConsistencyToken:
    return ConsistencyToken({(Stream.SUBSCRIBERS, p): o for p, o in after.items()})


async def watch(
    view: ConsentView,
    guard: FreshnessGuard,
    brand: str,
    after: Mapping[int, int],
    *,
    campaign: str | None = None,
    types: Collection[str] | None = CONSENT_CHANGES,
    page: int = PAGE,
    stopping: asyncio.Event | None = None,
    shown: Callable[[Sequence[Recorded]], Awaitable[list[Recorded]]] | None = None,
) -> AsyncIterator[tuple[Recorded, ConsistencyToken]]:
    """Each change of ``brand`` from ``after`` on, with the token to resume after it;
    without end (the caller stops iterating), or until ``stopping`` is set.
    ``shown``, given, makes each page read what is yielded of it, page by page (the
    personal data opened once for a page, not once for each change)."""
    after = dict(after)
    stopping = stopping or asyncio.Event()
    while not stopping.is_set():
        # Seen before the read: a batch applied after it moves them, and wakes us.
        seen = resume_after(guard.applied_token())
        listed = await view.changes(brand, after, page, campaign=campaign, types=types)
        events = listed.events if shown is None or not listed.events else await shown(listed.events)
        for i, recorded in enumerate(events, 1):
            if stopping.is_set():
                return
            after[recorded.position.partition] = recorded.position.offset + 1
            if i == len(events):  # the page is taken: past what it looked through
                after.update(listed.through)
            yield recorded, resume_token(after)
        after.update(listed.through)
        if len(listed.events) < page:
            deadline = time.monotonic() + REQUERY
            while (
                resume_after(guard.applied_token()) == seen
                and time.monotonic() < deadline
                and not stopping.is_set()
            ):
                await asyncio.sleep(IDLE_POLL)
