from __future__ import annotations

import pytest

from ledger.keywords import Intent, classify


@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "stop",
        " Stop. ",
        "UNSUBSCRIBE",
        "cancel",
        "End",
        "QUIT",
        "REVOKE",
        "OPTOUT",
        "OPT OUT",
        "opt-out",
        "Opt_Out!",
        "s t o p",
    ],
)
def test_standard_opt_out_keywords_revoke(text):
    assert classify(text) is Intent.OPT_OUT


@pytest.mark.parametrize("text", ["STOPALL", "stop all", "Stop-All"])
def test_stopall_revokes_brand_wide(text):
    assert classify(text) is Intent.OPT_OUT_BRAND_WIDE


@pytest.mark.parametrize("text", ["START", "unstop", "Yes", "yes!"])
def test_opt_in_keywords(text):
    assert classify(text) is Intent.OPT_IN


@pytest.mark.parametrize("text", ["HELP", "help?", "INFO"])
def test_help_keywords_change_no_consent(text):
    assert classify(text) is Intent.HELP


@pytest.mark.parametrize(
    "text",
    [
        "please stop texting me",
        "Remove me from your list",
        "wrong number",
        "Don't text me again",
        "take me off this",
        "no more messages please",
    ],
)
def test_replies_that_read_like_an_opt_out_are_candidates(text):
    assert classify(text) is Intent.REVOCATION_CANDIDATE


@pytest.mark.parametrize(
    "text",
    [
        "stop by the store at 5?",
        "STOP IT",
        "what time do you open",
        "yes please call me",
        "helpful, thanks",
    ],
)
def test_keywords_must_be_the_whole_message(text):
    assert classify(text) in (Intent.CONVERSATION, Intent.REVOCATION_CANDIDATE)
    assert classify(text) not in (Intent.OPT_OUT, Intent.OPT_IN, Intent.HELP)
