"""A write's events are appended to Kafka as separate records, and an append is not
atomic: a process killed between two batches, or a batch given up on, leaves the
first events in the ledger though the caller was never answered. Every such prefix
must deny at least what the whole write denies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ledger.campaigns import CampaignPurpose
from ledger.commands import HandleInboundMessage, handle_inbound
from ledger.events import MessageKind
from ledger.policy import decide
from ledger.state import SubscriberState, fold
from tests.builders import BRAND, PHONE, campaign, record

CHAT = campaign("chat", purpose=CampaignPurpose.CONVERSATIONAL)
AT = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)


@pytest.mark.parametrize("body", ["STOP", "STOPALL", "please stop texting me"])
@pytest.mark.parametrize("kind", [MessageKind.CONVERSATION_REPLY, MessageKind.REGULAR])
def test_a_stop_text_recorded_without_its_opt_out_opens_no_conversation(body, kind):
    # The InboundMessageReceived alone opened a conversation, so a conversational
    # campaign could reply to the STOP until the gateway's retry wrote the rest.
    cmd = HandleInboundMessage("in-1", PHONE, "+12125550100", body, "m-1", AT)
    events = handle_inbound(cmd, CHAT, SubscriberState(phone=PHONE, brand=BRAND), AT).events
    assert len(events) == 2
    later = AT + timedelta(minutes=1)
    for end in range(1, len(events) + 1):
        decision = decide(fold(record(events[:end])), CHAT, later, kind)
        assert not decision.allowed, (end, decision)


def test_an_ordinary_text_still_opens_its_conversation():
    cmd = HandleInboundMessage("in-1", PHONE, "+12125550100", "what are your hours?", "m-1", AT)
    events = handle_inbound(cmd, CHAT, SubscriberState(phone=PHONE, brand=BRAND), AT).events
    later = AT + timedelta(minutes=1)
    assert decide(fold(record(events)), CHAT, later, MessageKind.CONVERSATION_REPLY).allowed
