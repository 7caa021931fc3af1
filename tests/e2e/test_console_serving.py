"""How the service serves the auditor's console (``services.bootstrap``): over TLS
with the gRPC port's certificate and a Secure session cookie, and a start that
stops, naming CONSENT_CONSOLE_LISTEN, when its port is taken."""

from __future__ import annotations

import dataclasses
import re
import socket
import ssl

import aiohttp
import pytest

from services.bootstrap import StartError
from services.console.sessions import LOGIN_COOKIE, SESSION_COOKIE
from services.settings import TlsSettings
from tests.e2e.certs import Authority
from tests.e2e.harness import TOKENS, running, service_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_over_tls_the_console_speaks_https_and_its_cookies_are_secure(tmp_path, postgres_dsn):
    ca = Authority(tmp_path, "console-ca")
    server = ca.issue("consent-ledger", server=True)
    settings = dataclasses.replace(
        service_settings(tmp_path, postgres_dsn, kafka=None),
        tls=TlsSettings(server.cert, server.key),
        console_listen="127.0.0.1:0",
    )
    trusted = ssl.create_default_context(cafile=str(ca.cert))
    async with running(settings) as runtime:
        base = f"https://{runtime.console_address}"
        # unsafe: the jar keeps cookies of an IP address, as a browser does.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            form = await http.get(f"{base}/login", ssl=trusted)
            assert form.status == 200
            assert form.cookies[LOGIN_COOKIE]["secure"] is True
            nonce = re.search(r'name="nonce" value="([^"]+)"', await form.text())
            assert nonce is not None
            answer = await http.post(
                f"{base}/login",
                data={"nonce": nonce.group(1), "token": TOKENS["acme-app"][0]},
                ssl=trusted,
                allow_redirects=False,
            )
            assert answer.status == 303
            session = answer.cookies[SESSION_COOKIE]
            assert session["secure"] is True and session["httponly"] is True
            assert session["samesite"] == "Strict"
            home = await http.get(f"{base}/", ssl=trusted)
            assert "acme-app" in await home.text()
        # Plain HTTP on the console's port is no way in.
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                await http.get(f"http://{runtime.console_address}/login")


async def test_a_console_port_in_use_stops_the_start_naming_the_setting(tmp_path, postgres_dsn):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        settings = dataclasses.replace(
            service_settings(tmp_path, postgres_dsn, kafka=None), console_listen=address
        )
        with pytest.raises(StartError, match=f"cannot serve the console on {address}") as err:
            async with running(settings):
                pass
        assert "CONSENT_CONSOLE_LISTEN" in str(err.value)
