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


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("STOP STOP", Intent.OPT_OUT),
        ("stop. stop!", Intent.OPT_OUT),
        ("Stop, unsubscribe", Intent.OPT_OUT),
        ("opt out opt-out", Intent.OPT_OUT),
        ("END QUIT CANCEL", Intent.OPT_OUT),
        ("STOPALL STOPALL", Intent.OPT_OUT_BRAND_WIDE),
        ("STOP STOPALL", Intent.OPT_OUT_BRAND_WIDE),
        ("stopall, stop", Intent.OPT_OUT_BRAND_WIDE),
        ("Stop all. Stop!", Intent.OPT_OUT_BRAND_WIDE),
    ],
)
def test_a_message_of_opt_out_keywords_only_is_that_opt_out_brand_wide_if_any_is_stopall(
    text, intent
):
    assert classify(text) is intent


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


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        pytest.param("\uff33\uff34\uff2f\uff30", Intent.OPT_OUT, id="full-width STOP"),
        pytest.param("\U0001d42c\U0001d42d\U0001d428\U0001d429", Intent.OPT_OUT, id="bold stop"),
        pytest.param(
            "\uff33\uff34\uff2f\uff30\uff21\uff2c\uff2c",
            Intent.OPT_OUT_BRAND_WIDE,
            id="full-width STOPALL",
        ),
        pytest.param("\uff33\uff54\uff41\uff52\uff54", Intent.OPT_IN, id="full-width Start"),
        pytest.param("\uff28\uff25\uff2c\uff30", Intent.HELP, id="full-width HELP"),
        pytest.param("Don\u2019t text me", Intent.REVOCATION_CANDIDATE, id="U+2019"),
        pytest.param("don\u2018t message me", Intent.REVOCATION_CANDIDATE, id="U+2018"),
        pytest.param("Don\u02bct contact me", Intent.REVOCATION_CANDIDATE, id="U+02BC"),
        pytest.param("Don\uff07t text me", Intent.REVOCATION_CANDIDATE, id="U+FF07"),
        pytest.param(
            "\uff37\uff32\uff2f\uff2e\uff27 \uff2e\uff35\uff2d\uff22\uff25\uff32",
            Intent.REVOCATION_CANDIDATE,
            id="full-width wrong number",
        ),
    ],
)
def test_unicode_forms_and_typographic_apostrophes_read_as_their_plain_form(text, intent):
    assert classify(text) is intent
