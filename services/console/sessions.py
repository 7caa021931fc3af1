"""The console's signed cookies: who is logged in, and the login form's nonce.

A session cookie holds the SHA-256 of the token the auditor logged in with (never
the token) and a nonce for the logout form, signed with a key made when the
process starts (``itsdangerous``): a cookie cannot be forged or altered, it ends
after ``SESSION_SECONDS``, and every session ends when the process restarts. Each
request looks the digest up in the tokens file as it is now, so a token taken out
of the file logs its sessions out at once.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "consent_console"
LOGIN_COOKIE = "consent_console_login"
SESSION_SECONDS = 8 * 3600
"""A working day: an auditor logs in again the next morning."""
LOGIN_SECONDS = 3600
"""How long a login form may stay open before it is sent."""


@dataclass(frozen=True)
class Session:
    digest: str
    """The SHA-256 of the token logged in with (``auth.token_digest``)."""
    nonce: str
    """What the session's own forms (logout) must send back."""


class Cookies:
    def __init__(self, key: bytes | None = None) -> None:
        """``key``: the signing key; by default a new random one (sessions end with
        the process)."""
        key = secrets.token_bytes(32) if key is None else key
        self._session = URLSafeTimedSerializer(key, salt="consent-console-session")
        self._login = URLSafeTimedSerializer(key, salt="consent-console-login")

    def session(self, digest: str) -> tuple[str, Session]:
        """A new session for the token with SHA-256 ``digest``, and its cookie value."""
        session = Session(digest, secrets.token_urlsafe(16))
        return self._session.dumps([session.digest, session.nonce]), session

    def read_session(self, value: str | None) -> Session | None:
        """The session in a cookie value; None when there is none, or it is forged,
        altered or expired."""
        if not value:
            return None
        try:
            data = self._session.loads(value, max_age=SESSION_SECONDS)
        except BadSignature:  # SignatureExpired is one too
            return None
        if not (
            isinstance(data, list) and len(data) == 2 and all(isinstance(d, str) for d in data)
        ):
            return None
        return Session(data[0], data[1])

    def login_nonce(self) -> tuple[str, str]:
        """A login form's nonce and the cookie value that goes with it: a login POST
        must carry both, and the cookie (SameSite=Strict) only comes from this site's
        own pages, so another site cannot log a browser in under its token."""
        nonce = secrets.token_urlsafe(16)
        return nonce, self._login.dumps(nonce)

    def login_nonce_matches(self, cookie: str | None, sent: str) -> bool:
        if not cookie or not sent:
            return False
        try:
            nonce = self._login.loads(cookie, max_age=LOGIN_SECONDS)
        except BadSignature:
            return False
        return isinstance(nonce, str) and hmac.compare_digest(nonce, sent)
