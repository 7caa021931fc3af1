"""What the gRPC port trusts, read from files that change while it runs.

``TlsFiles``: the port's certificate, key and client CA. ``follow_tokens``: the
tokens file. Both are read again when their files change (a renewed certificate,
a rotated or revoked token), and a changed file that cannot be used is logged
while what is in use is kept.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from pathlib import Path

import grpc

from services.grpc_api.auth import TokenAuthenticator
from services.metrics import ServiceMetrics
from services.settings import TlsSettings

log = logging.getLogger(__name__)


class TlsFiles:
    """The gRPC port's certificate chain, key and client CA, read from their files
    at start and read again when they change, so a renewed certificate (cert-manager
    rewrites the secret's files) is served without a restart.

    grpcio asks ``fetch`` at every TLS handshake, from one of its own threads; it
    answers None (nothing new) unless a file's size, time or inode has changed.
    Every set of files is checked with the ``ssl`` module first: a pair that does
    not load together is refused at start, and after a change it is logged and the
    files in use are kept.
    """

    def __init__(self, tls: TlsSettings) -> None:
        self._files = [
            ("CONSENT_TLS_CERT_FILE", tls.cert_file),
            ("CONSENT_TLS_KEY_FILE", tls.key_file),
        ]
        if tls.client_ca_file is not None:
            self._files.append(("CONSENT_TLS_CLIENT_CA_FILE", tls.client_ca_file))
        self._tls = tls
        self._stamp: tuple[tuple[int, int, int], ...] = ()
        self._lock = threading.Lock()
        self.reloads = 0

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials that read the files again when they change; ``ValueError``
        (naming the setting) if they cannot be used now."""
        self._stamp = self._stamp_now()  # before reading: a change after it is seen
        first = self._load()
        return grpc.dynamic_ssl_server_credentials(
            first, self.fetch, require_client_authentication=self._tls.client_ca_file is not None
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:  # handshakes on several of grpcio's threads at once
            return self._fetch()

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = self._stamp_now()
        except ValueError:
            return None  # mid-rotation, say: keep what is in use, ask again next time
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            configuration = self._load()
        except (OSError, ValueError) as exc:
            log.warning(
                "the TLS files changed but cannot be used; keeping the ones in use: %s", exc
            )
            return None
        self.reloads += 1
        log.info("the TLS files changed; new connections get the new certificate")
        return configuration

    def _stamp_now(self) -> tuple[tuple[int, int, int], ...]:
        stamp = []
        for setting, path in self._files:
            try:
                stamp.append(file_stamp(path))
            except OSError as exc:
                raise ValueError(f"cannot read {path} ({setting}): {exc.strerror}") from exc
        return tuple(stamp)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        """The files as grpcio takes them; ``ValueError`` names the setting at fault."""
        pem = {}
        for setting, path in self._files:
            try:
                pem[setting] = path.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {path} ({setting}): {exc.strerror}") from exc
            expected = "PRIVATE KEY" if setting == "CONSENT_TLS_KEY_FILE" else "CERTIFICATE"
            if f"{expected}-----".encode() not in pem[setting]:
                raise ValueError(f"{path} ({setting}) holds no PEM {expected.lower()}")
        # grpcio would take a key that does not match its certificate and fail every
        # handshake; OpenSSL, through ``ssl``, says so now.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self._tls.cert_file, self._tls.key_file, password=_no_password)
            if self._tls.client_ca_file is not None:
                context.load_verify_locations(self._tls.client_ca_file)
        except ssl.SSLError as exc:
            names = ", ".join(setting for setting, _ in self._files)
            raise ValueError(
                f"the TLS files in {names} do not work together: {exc.reason}"
            ) from exc
        return grpc.ssl_server_certificate_configuration(
            [(pem["CONSENT_TLS_KEY_FILE"], pem["CONSENT_TLS_CERT_FILE"])],
            root_certificates=pem.get("CONSENT_TLS_CLIENT_CA_FILE"),
        )


def file_stamp(path: Path) -> tuple[int, int, int]:
    """What changes when a file is rewritten or replaced (``OSError`` if it is gone)."""
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def follow_tokens(
    path: Path,
    auth: TokenAuthenticator,
    interval: float,
    seen: tuple[int, int, int],
    metrics: ServiceMetrics | None = None,
) -> None:
    """Read the tokens file again whenever it changes, so tokens are added and
    revoked without a restart (within ``interval`` seconds). ``seen`` is the file's
    stamp when ``auth`` was read. A file that cannot be used is logged, and the
    tokens in use are kept; ``metrics`` says so for as long as it stands (a revoking
    edit that also broke the file leaves the revoked token working)."""
    usable = True  # the file as ``seen`` is the one in use
    if metrics is not None:
        metrics.tokens_loaded_at = time.time()
    while True:
        await asyncio.sleep(interval)
        try:
            now = file_stamp(path)
        except OSError:
            # Mid-replacement, say: look again next time. Gone for good, its tokens
            # stay in use unread: unusable too until it is back.
            if metrics is not None:
                metrics.tokens_file_unreadable = True
            continue
        if now != seen:
            seen = now
            try:
                auth.take(TokenAuthenticator.from_file(path))
            except (OSError, ValueError) as exc:
                usable = False
                log.warning(
                    "the tokens file %s changed but cannot be used; keeping the tokens in use: %s",
                    path,
                    exc,
                )
            except Exception:
                # Any other failure to read it must not end the following: every later
                # revocation would go unread, and the revoked tokens keep working.
                usable = False
                log.exception(
                    "the tokens file %s changed but could not be read; keeping the tokens in use",
                    path,
                )
            else:
                usable = True
                if metrics is not None:
                    metrics.tokens_loaded_at = time.time()
                log.info("the tokens file %s changed; its tokens are in use", path)
        if metrics is not None:
            metrics.tokens_file_unreadable = not usable


def _no_password() -> bytes:
    raise ValueError("the TLS key is encrypted; give it unencrypted (grpcio cannot use it)")
