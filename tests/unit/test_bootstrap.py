"""The composition root refuses what would fail open before it connects to anything."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.bootstrap import Runtime, StartError, warn_if_plaintext_beyond_loopback
from services.settings import Settings, TlsSettings


async def test_no_local_admin_token_is_made_outside_the_embedded_mode(tmp_path) -> None:
    runtime = Runtime(Settings(tokens_file=None, data_dir=tmp_path, embedded=False))
    with pytest.raises(StartError, match="CONSENT_AUTH_TOKENS_FILE is required outside"):
        await runtime.start()
    assert runtime.dev_token is None
    assert list(tmp_path.iterdir()) == [], "a tokens file or a token was written"


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051", "10.0.0.5:50051"])
def test_plaintext_beyond_loopback_is_warned_about(listen, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="services.bootstrap"):
        warn_if_plaintext_beyond_loopback(Settings(listen=listen))
    assert f"serving gRPC in plaintext on {listen}" in caplog.text
    assert "CONSENT_TLS_CERT_FILE" in caplog.text


@pytest.mark.parametrize(
    "settings",
    [
        Settings(listen="127.0.0.1:50051"),
        Settings(listen="[::1]:0"),
        Settings(listen="0.0.0.0:50051", tls=TlsSettings(Path("c.pem"), Path("k.pem"))),
    ],
)
def test_loopback_or_tls_is_not_warned_about(settings, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="services.bootstrap"):
        warn_if_plaintext_beyond_loopback(settings)
    assert caplog.text == ""
