"""Every setting, read once from the environment at start-up.

The table in the README lists them; ``Settings.from_env`` is the only reader.
Settings are plain data: this module imports no adapter and no service; the
composition root hands each part to what it configures.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ledger.commands import OPT_OUT_ERROR_CODES
from ledger.health import HealthLimits
from ledger.ports import Stream


class SettingsError(ValueError):
    """A setting that is missing or malformed; names the variable."""


@dataclass(frozen=True)
class KafkaLedgerSettings:
    """Where the ledger lives and how its topics are made; read once at start-up.
    ``services.adapters.kafka_ledger`` turns it into aiokafka's options.

    Production defaults assume at least three brokers: each event on three replicas,
    and an append refused unless two of them have it.
    """

    bootstrap_servers: str
    topic_prefix: str = ""
    """Prepended verbatim to both topic names (``"staging."``, a test's own prefix)."""
    subscriber_topic: str = "consent.subscriber-events.v1"
    campaign_topic: str = "consent.campaign-events.v1"
    checkpoint_topic: str = "consent.checkpoints.v1"
    """The signed checkpoints of the ledger's hash chain (``services.checkpoints``):
    made and checked with the ledger topics, and like them kept forever."""
    subscriber_partitions: int = 12
    campaign_partitions: int = 1
    replication_factor: int = 3
    min_insync_replicas: int = 2
    client_id: str = "consent-ledger"
    request_timeout_s: float = 30.0
    """One Kafka request, and how long an unsent batch may wait for a broker."""
    append_timeout_s: float = 40.0
    """The most one ``append`` may take before it raises (the broker may be down)."""
    max_record_bytes: int = 1024 * 1024
    """The largest record the producer sends (aiokafka's ``max_request_size``, at its
    default); the broker's ``message.max.bytes`` is a little above it by default."""

    def __post_init__(self) -> None:
        if self.subscriber_partitions < 1 or self.campaign_partitions < 1:
            raise ValueError("topics need at least one partition")
        if not 1 <= self.min_insync_replicas <= self.replication_factor:
            raise ValueError(
                f"min_insync_replicas={self.min_insync_replicas} must be between 1 and "
                f"replication_factor={self.replication_factor}, or no append could succeed"
            )

    def topic(self, stream: Stream) -> str:
        name = self.subscriber_topic if stream is Stream.SUBSCRIBERS else self.campaign_topic
        return self.topic_prefix + name

    def checkpoint_topic_name(self) -> str:
        return self.topic_prefix + self.checkpoint_topic

    def topic_partitions(self) -> dict[str, int]:
        """Every topic this ledger needs, with its partition count."""
        topics = {self.topic(stream): self.partition_count(stream) for stream in Stream}
        return {**topics, self.checkpoint_topic_name(): 1}

    def partition_count(self, stream: Stream) -> int:
        if stream is Stream.SUBSCRIBERS:
            return self.subscriber_partitions
        return self.campaign_partitions


@dataclass(frozen=True)
class FreshnessSettings:
    """The consistency rule's timings, for ``services.freshness.FreshnessGuard``."""

    refresh_interval: float = 0.05
    """How often the ledger's end offsets and the view's positions are observed, and
    the promise: a read without a token counts every write acknowledged this long
    before it arrived (it waits for an observation that started no earlier)."""
    max_observation_age: float = 2.0
    """An observation older than this is not trusted: reads fail closed."""
    wait_bound: float = 0.5
    """How long a read waits for the projection to catch up before it fails closed."""


@dataclass(frozen=True)
class RateLimit:
    """A caller's rate limit, for ``services.grpc_api.admission``: the default for
    every caller, or one caller's own from the tokens file."""

    rate: float
    """Calls a second, on average; ``math.inf`` for no limit."""
    burst: int
    """The most calls a caller may make at once, after a quiet spell."""

    def __post_init__(self) -> None:
        if not self.rate > 0:  # nan too
            raise ValueError(f"a rate limit's rate must be above 0, got {self.rate!r}")
        if self.burst < 1:
            raise ValueError(f"a rate limit's burst must be at least 1, got {self.burst!r}")

    @staticmethod
    def of(rate: float, burst: int | None = None) -> RateLimit:
        """``rate`` calls a second; ``burst`` defaults to one second's worth."""
        return RateLimit(rate, max(1, math.ceil(rate)) if burst is None else burst)

    @property
    def unlimited(self) -> bool:
        return math.isinf(self.rate)


UNLIMITED = RateLimit(math.inf, 1)
"""A caller exempt from any default limit."""


GRPC_MAX_MS = 2**31 - 1
"""gRPC core reads its times as 32-bit milliseconds (some 24.8 days)."""


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client connection to the gRPC port may hold, and for how long: the
    HTTP/2 transport's settings, for ``services.grpc_api.server``. Times in seconds."""

    max_concurrent_streams: int = 1000
    """Calls open at once on one connection; a client's further calls wait in the
    client for one to end. Not 100 (the least RFC 9113 asks a peer to allow, and
    Envoy's advice at an edge): gRPC's clients put every call on one connection,
    and one that keeps more short calls in flight than the cap has some refused
    (gRPC core frees a stream's place only after the client saw it end, so the
    next call may come first)."""
    keepalive_time: float = 60.0
    """How long the server may hear nothing from a client before it pings it, with or
    without calls: a peer that vanished (no FIN) is found, and its calls end."""
    keepalive_timeout: float = 20.0
    """How long the server waits for a ping's answer before it closes the connection."""
    min_ping_interval: float = 5.0
    """The least time between a client's pings while the server sends no data; a
    ping sooner is a strike."""
    max_ping_strikes: int = 2
    """Strikes a connection may take; past them it gets GOAWAY ``too_many_pings``."""
    max_idle: float | None = 900.0
    """How long a connection may hold no call before it is closed (GOAWAY); None:
    for ever. Pings are no call; a client's channel reconnects at its next call."""
    max_age: float | None = None
    """How long a connection may serve new calls before GOAWAY sends the client to
    reconnect (and so to rebalance across replicas); None: for ever."""
    max_age_grace: float | None = None
    """After ``max_age``, how long the calls open on the connection may still run
    before it is closed under them; None: until they end."""


@dataclass(frozen=True)
class TlsSettings:
    """The gRPC port's TLS: the server's certificate chain and key (PEM files), and for
    mutual TLS the CA that client certificates must be signed by."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    reuse_port: bool = False
    """Let several processes listen on ``listen`` at once (``SO_REUSEPORT``): only
    when asked, or a second instance started by mistake would run beside the first."""
    ledger: str = "postgres"
    """``kafka`` (production) or ``postgres`` (the local, single-node ledger)."""
    kafka: KafkaLedgerSettings | None = None
    postgres_dsn: str | None = None
    """None starts an embedded PostgreSQL under ``data_dir``."""
    data_dir: Path = Path("var/data")
    embedded: bool = False
    """Started with ``--embedded``: the local, single-machine default (``make run``)."""
    tokens_file: Path | None = None
    """None, with ``embedded`` only, creates a local admin token under ``data_dir``."""
    freshness: FreshnessSettings = field(default_factory=FreshnessSettings)
    shutdown_grace: float = 10.0
    projector_group: str = "consent-projector"
    projector: str = "in-process"
    """``in-process``: ``serve`` runs the projector (one process, as ``make run``);
    ``off``: it leaves projection to ``consent-ledger project`` processes and reads
    what they applied from PostgreSQL (it fails closed while they lag)."""
    pool_size: int = 10
    metrics_listen: str = ""
    """``host:port`` of the Prometheus endpoint (``/metrics``); empty serves none."""
    tls: TlsSettings | None = None
    """None serves gRPC in plaintext (loopback, or behind a mesh that encrypts)."""
    health_listen: str = ""
    """``host:port`` of a plaintext port serving only the gRPC health service (for
    probes that cannot speak TLS); empty serves none."""
    console_listen: str = ""
    """``host:port`` of the auditor's console (``services.console``); empty serves none."""
    tokens_reload_interval: float = 5.0
    """How often the tokens file is looked at for changes (seconds)."""
    log_format: str = "text"
    """``text`` (for people) or ``json`` (one object per line, for a log pipeline)."""
    postgres_timeout: float = 1.5
    """Seconds a call's query to PostgreSQL may take, waiting for a connection included;
    past it a check fails closed and any other call answers UNAVAILABLE."""
    write_timeout: float = 10.0
    """Seconds a write may wait for the ledger at most (less when the caller's deadline
    is nearer); past it the write answers UNAVAILABLE, outcome unknown."""
    cansend_future_horizon: timedelta = timedelta(days=30)
    """How far ahead of now a CanSend's ``at`` may be (answered provisionally)."""
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    """What one client connection to the gRPC port may hold, and for how long."""
    rate_limit: RateLimit | None = None
    """Every caller's rate limit, unless its entry in the tokens file sets its own;
    None: no limit."""
    log_repeat_limit: int = 10
    """Lines logged by one statement of the code per ``log_repeat_interval``, after
    which they are counted, not written; 0: no limit."""
    log_repeat_interval: float = 60.0
    checkpoint_key_file: Path | None = None
    """The Ed25519 key checkpoints of the ledger's chain are signed with (PEM); None
    signs none, except with ``embedded``, which makes one under ``data_dir``."""
    checkpoint_interval: float = 60.0
    """Seconds between checkpoints (each covers what was appended since the last)."""
    import_prune_interval: float = 3600.0
    """Seconds between prunings of old append turns by this process's imports at
    most; 0: every import prunes as it begins."""
    import_append_lease: float = 120.0
    """Seconds an import's turn to append a record lasts unless it ends it
    (``services.usecases.imports.APPEND_LEASE_S``): how long the records of an
    import that died wait for the next import."""
    health_limits: HealthLimits = field(default_factory=HealthLimits)
    """The opt-out and error rates above which campaign health flags a campaign or a
    sending number. The provider's notice gives them for a sender, not per brand."""
    opt_out_error_codes: frozenset[str] = OPT_OUT_ERROR_CODES
    """The provider error codes a delivery outcome reads as "the recipient opted out
    at the provider": such an outcome holds the number for review
    (``ledger.commands.provider_opt_out_hold``)."""
    retention_years: int = 5
    """Years proof is kept after the last fact about a phone and brand, before its
    personal data may be erased (``ledger.retention``)."""

    @staticmethod
    def from_env(
        env: Mapping[str, str] | None = None, *, embedded: bool = False, api: bool = True
    ) -> Settings:
        """``api=False`` for a process that serves no API (``project``): no tokens
        file is needed."""
        e = dict(os.environ if env is None else env)

        def number(name: str, default: float, *, least: float = 0, above: bool = True) -> float:
            """A finite number, above ``least`` (or at least ``least`` when not ``above``):
            ``nan`` passes every comparison, and a negative interval busy-loops."""
            raw = e.get(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(f"{name} must be a number, got {raw!r}") from None
            if not math.isfinite(value) or value < least or (above and value == least):
                bound = f"above {least:g}" if above else f"at least {least:g}"
                raise SettingsError(f"{name} must be a finite number {bound}, got {raw!r}")
            return value

        def share(name: str, default: float) -> float:
            """A rate, from 0 to 1 (0.003 is 0.3 %)."""
            value = number(name, default, least=0, above=False)
            if value > 1:
                raise SettingsError(
                    f"{name} must be a share from 0 to 1 (0.06 is 6 %), got {e[name]!r}"
                )
            return value

        def whole(name: str, default: int, *, least: int = 1) -> int:
            value = float(number(name, default, least=least, above=False))
            if not value.is_integer():
                raise SettingsError(f"{name} must be a whole number, got {e[name]!r}")
            return int(value)

        def text(name: str, default: str) -> str:
            """A setting that means nothing when empty: an empty value is refused, not
            taken for the default, so a template that left it blank is caught."""
            value = e.get(name, default)
            if not value.strip():
                raise SettingsError(f"{name} is set but empty: give a value, or unset it")
            return value

        ledger = e.get("CONSENT_LEDGER", "postgres" if embedded else "kafka")
        if ledger not in ("kafka", "postgres"):
            raise SettingsError(f"CONSENT_LEDGER must be kafka or postgres, got {ledger!r}")
        kafka = None
        if ledger == "kafka":
            bootstrap = e.get("CONSENT_KAFKA_BOOTSTRAP")
            if not bootstrap:
                raise SettingsError("CONSENT_KAFKA_BOOTSTRAP is required when CONSENT_LEDGER=kafka")
            replication = whole("CONSENT_KAFKA_REPLICATION_FACTOR", 3)
            min_insync = whole("CONSENT_KAFKA_MIN_INSYNC_REPLICAS", 2)
            if min_insync > replication:
                raise SettingsError(
                    f"CONSENT_KAFKA_MIN_INSYNC_REPLICAS ({min_insync}) must not exceed "
                    f"CONSENT_KAFKA_REPLICATION_FACTOR ({replication}), or no append could succeed"
                )
            kafka = KafkaLedgerSettings(
                bootstrap_servers=bootstrap,
                topic_prefix=e.get("CONSENT_KAFKA_TOPIC_PREFIX", ""),
                subscriber_partitions=whole("CONSENT_KAFKA_PARTITIONS", 12),
                replication_factor=replication,
                min_insync_replicas=min_insync,
                request_timeout_s=number("CONSENT_KAFKA_REQUEST_TIMEOUT_MS", 30_000) / 1000,
                append_timeout_s=number("CONSENT_KAFKA_APPEND_TIMEOUT_MS", 40_000) / 1000,
            )
        reads = e.get("CONSENT_CANSEND_READS", "replica")
        if reads != "replica":
            # The per-call PostgreSQL reads were removed: a deployment that chose them
            # is told, not silently given the replica's memory use.
            raise SettingsError(
                f"CONSENT_CANSEND_READS={reads!r} is no longer supported: CanSend always "
                "reads the in-memory replica of the view (see the README's 'Where CanSend "
                "reads'); remove the setting"
            )
        projector = e.get("CONSENT_PROJECTOR", "in-process")
        if projector not in ("in-process", "off"):
            raise SettingsError(f"CONSENT_PROJECTOR must be in-process or off, got {projector!r}")
        dsn = e.get("CONSENT_POSTGRES_DSN") or None
        if dsn is None and not embedded:
            raise SettingsError("CONSENT_POSTGRES_DSN is required (or run with --embedded)")
        if dsn is None and projector == "off":
            # The embedded PostgreSQL is this process's own: no `project` could reach it,
            # and every read of a newer fact would fail closed for good.
            raise SettingsError(
                "CONSENT_PROJECTOR=off needs CONSENT_POSTGRES_DSN, the database that "
                "`consent-ledger project` processes write to; --embedded projects in its "
                "own process"
            )
        listen = e.get("CONSENT_GRPC_LISTEN", "127.0.0.1:50051")
        host_and_port(listen, "CONSENT_GRPC_LISTEN")
        reuse_port = e.get("CONSENT_GRPC_REUSE_PORT", "false")
        if reuse_port not in ("true", "false"):
            raise SettingsError(
                f"CONSENT_GRPC_REUSE_PORT must be true or false, got {reuse_port!r}"
            )
        metrics = e.get("CONSENT_METRICS_LISTEN", "127.0.0.1:9464" if embedded else "")
        if metrics:
            host_and_port(metrics, "CONSENT_METRICS_LISTEN")
        log_format = e.get("CONSENT_LOG_FORMAT", "text")
        if log_format not in ("text", "json"):
            raise SettingsError(f"CONSENT_LOG_FORMAT must be text or json, got {log_format!r}")
        health = e.get("CONSENT_HEALTH_LISTEN", "")
        if health:
            host_and_port(health, "CONSENT_HEALTH_LISTEN")
        console = e.get("CONSENT_CONSOLE_LISTEN", "")
        if console:
            host_and_port(console, "CONSENT_CONSOLE_LISTEN")
        # Empty is unset: a blank in a template must not pass for a file, and outside
        # --embedded no file means no start (never the local all-brands admin token).
        tokens = e.get("CONSENT_AUTH_TOKENS_FILE", "").strip()
        if not tokens and not embedded and api:
            raise SettingsError(
                "CONSENT_AUTH_TOKENS_FILE is required outside --embedded (it is unset or empty)"
            )
        freshness = FreshnessSettings(
            refresh_interval=number("CONSENT_FRESHNESS_REFRESH_MS", 50) / 1000,
            wait_bound=number("CONSENT_FRESHNESS_WAIT_MS", 500) / 1000,
        )
        if freshness.refresh_interval >= freshness.max_observation_age:
            raise SettingsError(
                "CONSENT_FRESHNESS_REFRESH_MS must be below "
                f"{freshness.max_observation_age * 1000:g}: an observation older than that "
                "is not trusted, so every read would fail closed"
            )

        def retention_years() -> int:
            years = number("CONSENT_RETENTION_YEARS", 5, least=1, above=False)
            if years != int(years) or years > 100:
                raise SettingsError(
                    f"CONSENT_RETENTION_YEARS must be a whole number of years, 1 to 100,"
                    f" got {e['CONSENT_RETENTION_YEARS']!r}"
                )
            return int(years)

        horizon = number("CONSENT_CANSEND_FUTURE_HORIZON_DAYS", 30, least=0, above=False)
        if horizon > 366:
            raise SettingsError(
                f"CONSENT_CANSEND_FUTURE_HORIZON_DAYS must be at most 366, got {horizon:g}"
            )
        rate_limit = None
        if "CONSENT_RATE_LIMIT_RPS" in e:
            burst = None
            if "CONSENT_RATE_LIMIT_BURST" in e:
                burst = whole("CONSENT_RATE_LIMIT_BURST", 1)
            rate_limit = RateLimit.of(number("CONSENT_RATE_LIMIT_RPS", 0), burst)
        elif "CONSENT_RATE_LIMIT_BURST" in e:
            raise SettingsError("CONSENT_RATE_LIMIT_BURST needs CONSENT_RATE_LIMIT_RPS")
        return Settings(
            listen=listen,
            reuse_port=reuse_port == "true",
            ledger=ledger,
            kafka=kafka,
            postgres_dsn=dsn,
            data_dir=Path(text("CONSENT_DATA_DIR", "var/data")),
            embedded=embedded,
            tokens_file=Path(tokens) if tokens else None,
            freshness=freshness,
            shutdown_grace=number("CONSENT_SHUTDOWN_GRACE_S", 10, above=False),
            projector_group=text("CONSENT_PROJECTOR_GROUP", "consent-projector"),
            projector=projector,
            # asyncpg's pools here keep two connections open at least
            pool_size=whole("CONSENT_POSTGRES_POOL_SIZE", 10, least=2),
            metrics_listen=metrics,
            tls=_tls(e),
            health_listen=health,
            console_listen=console,
            log_format=log_format,
            cansend_future_horizon=timedelta(days=horizon),
            connections=_connection_limits(e, number, whole),
            rate_limit=rate_limit,
            log_repeat_limit=whole("CONSENT_LOG_REPEAT_LIMIT", 10, least=0),
            log_repeat_interval=number("CONSENT_LOG_REPEAT_INTERVAL_S", 60),
            postgres_timeout=number("CONSENT_POSTGRES_TIMEOUT_MS", 1500) / 1000,
            write_timeout=number("CONSENT_WRITE_TIMEOUT_MS", 10000) / 1000,
            checkpoint_key_file=(
                Path(text("CONSENT_CHECKPOINT_KEY_FILE", ""))
                if "CONSENT_CHECKPOINT_KEY_FILE" in e
                else None
            ),
            checkpoint_interval=number("CONSENT_CHECKPOINT_INTERVAL_S", 60),
            import_prune_interval=number("CONSENT_IMPORT_PRUNE_INTERVAL_S", 3600, above=False),
            import_append_lease=number("CONSENT_IMPORT_APPEND_LEASE_S", 120),
            health_limits=HealthLimits(
                opt_out=share("CONSENT_OPT_OUT_RATE_LIMIT", HealthLimits.opt_out),
                error=share("CONSENT_ERROR_RATE_LIMIT", HealthLimits.error),
            ),
            retention_years=retention_years(),
            opt_out_error_codes=_error_codes(e),
        )


def _connection_limits(
    e: Mapping[str, str],
    number: Callable[..., float],
    whole: Callable[..., int],
) -> ConnectionLimits:
    """The gRPC port's ``ConnectionLimits``; a time of 0 means none where none is
    a choice (idle, age), and every time must fit gRPC's milliseconds."""

    def seconds(name: str, default: float | None, *, off: bool = False) -> float:
        """Above 0, or 0 too when ``off`` (no limit, as a default of None)."""
        value = number(name, default or 0, above=not off)
        if value * 1000 > GRPC_MAX_MS:
            raise SettingsError(
                f"{name} must be at most {GRPC_MAX_MS // 1000} seconds (gRPC counts "
                f"milliseconds in 32 bits), got {e[name]!r}"
            )
        if value and value < 0.001:
            raise SettingsError(f"{name} must be at least 0.001 (a millisecond), got {e[name]!r}")
        return value

    defaults = ConnectionLimits()
    streams = whole("CONSENT_GRPC_MAX_CONCURRENT_STREAMS", defaults.max_concurrent_streams)
    if streams > GRPC_MAX_MS:
        raise SettingsError(
            f"CONSENT_GRPC_MAX_CONCURRENT_STREAMS must be at most {GRPC_MAX_MS}, got {streams}"
        )
    age = seconds("CONSENT_GRPC_MAX_CONNECTION_AGE_S", defaults.max_age, off=True)
    grace = seconds("CONSENT_GRPC_MAX_CONNECTION_AGE_GRACE_S", defaults.max_age_grace, off=True)
    if "CONSENT_GRPC_MAX_CONNECTION_AGE_GRACE_S" in e and not age:
        # A grace with no age would never apply: the operator meant an age.
        raise SettingsError(
            "CONSENT_GRPC_MAX_CONNECTION_AGE_GRACE_S needs CONSENT_GRPC_MAX_CONNECTION_AGE_S"
        )
    return ConnectionLimits(
        max_concurrent_streams=streams,
        keepalive_time=seconds("CONSENT_GRPC_KEEPALIVE_TIME_S", defaults.keepalive_time),
        keepalive_timeout=seconds("CONSENT_GRPC_KEEPALIVE_TIMEOUT_S", defaults.keepalive_timeout),
        min_ping_interval=seconds("CONSENT_GRPC_MIN_PING_INTERVAL_S", defaults.min_ping_interval),
        max_ping_strikes=whole("CONSENT_GRPC_MAX_PING_STRIKES", defaults.max_ping_strikes),
        max_idle=seconds("CONSENT_GRPC_MAX_CONNECTION_IDLE_S", defaults.max_idle, off=True) or None,
        max_age=age or None,
        max_age_grace=grace if "CONSENT_GRPC_MAX_CONNECTION_AGE_GRACE_S" in e else None,
    )


_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""An error code as providers write them (Twilio's are digits): a code with spaces or
other marks inside is a typo that would match no outcome, and hold nothing."""


def _error_codes(e: Mapping[str, str]) -> frozenset[str]:
    name = "CONSENT_OPT_OUT_ERROR_CODES"
    raw = e.get(name)
    if raw is None:
        return OPT_OUT_ERROR_CODES
    codes = [code.strip() for code in raw.split(",")]
    if not raw.strip() or not all(codes):
        # A blank code, or none at all, would quietly stop holding the opt-outs the
        # provider reports: the default is the safer reading of a template's slip.
        raise SettingsError(
            f"{name} must list error codes separated by commas (default 21610), got {raw!r}"
        )
    for code in codes:
        if not _ERROR_CODE.fullmatch(code):
            raise SettingsError(
                f"{name}: {code!r} is no error code (letters, digits, '.', '_' or '-', at most 64)"
            )
    return frozenset(codes)


def _tls(e: Mapping[str, str]) -> TlsSettings | None:
    names = ("CONSENT_TLS_CERT_FILE", "CONSENT_TLS_KEY_FILE", "CONSENT_TLS_CLIENT_CA_FILE")
    for name in names:
        # Unset is plaintext; empty would be too, so a blank meant to be a path is refused.
        if name in e and not e[name].strip():
            raise SettingsError(f"{name} is set but empty: give a PEM file, or unset it")
    cert, key, ca = (e.get(name) for name in names)
    if bool(cert) != bool(key):
        raise SettingsError(
            "CONSENT_TLS_CERT_FILE and CONSENT_TLS_KEY_FILE go together: set both, or neither"
        )
    if not cert or not key:
        if ca:
            raise SettingsError(
                "CONSENT_TLS_CLIENT_CA_FILE needs CONSENT_TLS_CERT_FILE and "
                "CONSENT_TLS_KEY_FILE: mutual TLS is TLS first"
            )
        return None
    return TlsSettings(Path(cert), Path(key), Path(ca) if ca else None)


_PORT = re.compile(r"[0-9]{1,5}")


def host_and_port(address: str, name: str = "address") -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6) as its parts; ``SettingsError`` if not one."""
    host, sep, port = address.rpartition(":")
    # ASCII digits only: isdigit() also takes "²", which int() then refuses.
    if not sep or not host or not _PORT.fullmatch(port) or int(port) > 65535:
        raise SettingsError(f"{name} must be host:port, got {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a ``host_and_port`` host) is this machine only. A name other
    than ``localhost`` is not resolved: it counts as reachable from elsewhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
