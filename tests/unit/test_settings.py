"""``Settings.from_env``: defaults, and a clear error naming a malformed variable."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from ledger.health import HealthLimits
from services.settings import (
    ConnectionLimits,
    KafkaLedgerSettings,
    RateLimit,
    Settings,
    SettingsError,
    TlsSettings,
    host_and_port,
    is_loopback,
)

EMBEDDED: dict[str, str] = {}


@pytest.mark.parametrize("reads", ["postgres", "redis", ""])
def test_a_removed_read_mode_is_refused_by_name(reads: str) -> None:
    with pytest.raises(SettingsError, match=f"CONSENT_CANSEND_READS='{reads}' is no longer"):
        Settings.from_env({"CONSENT_CANSEND_READS": reads}, embedded=True)


def test_the_one_read_mode_may_still_be_named() -> None:
    Settings.from_env({"CONSENT_CANSEND_READS": "replica"}, embedded=True)


def test_kafka_needs_its_bootstrap_servers() -> None:
    with pytest.raises(SettingsError, match="CONSENT_KAFKA_BOOTSTRAP"):
        Settings.from_env({"CONSENT_LEDGER": "kafka"}, embedded=True)


def test_a_number_setting_that_is_not_a_number_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="CONSENT_FRESHNESS_WAIT_MS must be a number"):
        Settings.from_env({"CONSENT_FRESHNESS_WAIT_MS": "soon"}, embedded=True)


def test_metrics_are_served_on_loopback_by_the_embedded_default_only() -> None:
    assert Settings.from_env(EMBEDDED, embedded=True).metrics_listen == "127.0.0.1:9464"
    production = {"CONSENT_POSTGRES_DSN": "postgresql://db/consent", "CONSENT_LEDGER": "postgres"}
    production["CONSENT_AUTH_TOKENS_FILE"] = "/etc/consent/tokens.json"
    assert Settings.from_env(production).metrics_listen == ""
    chosen = {**production, "CONSENT_METRICS_LISTEN": "[::]:9464"}
    assert Settings.from_env(chosen).metrics_listen == "[::]:9464"
    assert host_and_port("[::]:9464") == ("::", 9464)
    assert host_and_port("0.0.0.0:0") == ("0.0.0.0", 0)


def test_a_metrics_address_that_is_not_host_and_port_is_refused_by_name() -> None:
    for bad in ("9464", ":9464", "localhost:", "localhost:http", "localhost:70000"):
        with pytest.raises(SettingsError, match="CONSENT_METRICS_LISTEN must be host:port"):
            Settings.from_env({"CONSENT_METRICS_LISTEN": bad}, embedded=True)


def test_tls_is_off_unless_a_certificate_and_key_are_given() -> None:
    assert Settings.from_env(EMBEDDED, embedded=True).tls is None
    env = {"CONSENT_TLS_CERT_FILE": "/tls/tls.crt", "CONSENT_TLS_KEY_FILE": "/tls/tls.key"}
    tls = Settings.from_env(env, embedded=True).tls
    assert tls == TlsSettings(Path("/tls/tls.crt"), Path("/tls/tls.key"), None)
    env["CONSENT_TLS_CLIENT_CA_FILE"] = "/tls/clients.crt"
    mutual = Settings.from_env(env, embedded=True).tls
    assert mutual is not None and mutual.client_ca_file == Path("/tls/clients.crt")


@pytest.mark.parametrize(
    "env, refused",
    [
        ({"CONSENT_TLS_CERT_FILE": "/tls/tls.crt"}, "CONSENT_TLS_KEY_FILE go together"),
        ({"CONSENT_TLS_KEY_FILE": "/tls/tls.key"}, "CONSENT_TLS_KEY_FILE go together"),
        ({"CONSENT_TLS_CLIENT_CA_FILE": "/tls/ca.crt"}, "mutual TLS is TLS first"),
        ({"CONSENT_HEALTH_LISTEN": "8081"}, "CONSENT_HEALTH_LISTEN must be host:port"),
        ({"CONSENT_LOG_FORMAT": "xml"}, "CONSENT_LOG_FORMAT must be text or json"),
    ],
)
def test_half_a_tls_setting_or_another_bad_value_is_refused_by_name(env, refused) -> None:
    with pytest.raises(SettingsError, match=refused):
        Settings.from_env(env, embedded=True)


PRODUCTION = {
    "CONSENT_KAFKA_BOOTSTRAP": "kafka:9092",
    "CONSENT_POSTGRES_DSN": "postgresql://db/consent",
    "CONSENT_AUTH_TOKENS_FILE": "/etc/consent/tokens.json",
}


@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_tokens_file_is_refused_outside_embedded_like_an_unset_one(blank) -> None:
    # An empty value used to pass, and the start then made an all-brands admin token.
    with pytest.raises(SettingsError, match="CONSENT_AUTH_TOKENS_FILE is required outside"):
        Settings.from_env({**PRODUCTION, "CONSENT_AUTH_TOKENS_FILE": blank})
    embedded = Settings.from_env({"CONSENT_AUTH_TOKENS_FILE": blank}, embedded=True)
    assert embedded.tokens_file is None and embedded.embedded


def test_only_the_embedded_mode_is_marked_embedded() -> None:
    assert not Settings.from_env(PRODUCTION).embedded
    assert Settings.from_env(PRODUCTION).tokens_file == Path("/etc/consent/tokens.json")


@pytest.mark.parametrize(
    "name", ["CONSENT_TLS_CERT_FILE", "CONSENT_TLS_KEY_FILE", "CONSENT_TLS_CLIENT_CA_FILE"]
)
def test_a_tls_setting_that_is_present_but_empty_is_refused_not_taken_for_plaintext(name) -> None:
    tls = {"CONSENT_TLS_CERT_FILE": "/tls/tls.crt", "CONSENT_TLS_KEY_FILE": "/tls/tls.key"}
    with pytest.raises(SettingsError, match=f"{name} is set but empty"):
        Settings.from_env({**PRODUCTION, **tls, name: ""})
    every_one_empty = dict.fromkeys(
        ("CONSENT_TLS_CERT_FILE", "CONSENT_TLS_KEY_FILE", "CONSENT_TLS_CLIENT_CA_FILE"), ""
    )
    with pytest.raises(SettingsError, match="is set but empty"):
        Settings.from_env({**PRODUCTION, **every_one_empty})


@pytest.mark.parametrize("name", ["CONSENT_DATA_DIR", "CONSENT_PROJECTOR_GROUP"])
def test_a_setting_that_means_nothing_empty_is_refused_when_empty(name) -> None:
    with pytest.raises(SettingsError, match=f"{name} is set but empty"):
        Settings.from_env({**PRODUCTION, name: ""})


@pytest.mark.parametrize(
    "name, value",
    [
        ("CONSENT_FRESHNESS_WAIT_MS", "nan"),
        ("CONSENT_FRESHNESS_WAIT_MS", "inf"),
        ("CONSENT_FRESHNESS_WAIT_MS", "0"),
        ("CONSENT_FRESHNESS_REFRESH_MS", "-5"),
        ("CONSENT_FRESHNESS_REFRESH_MS", "0"),
        ("CONSENT_FRESHNESS_REFRESH_MS", "nan"),
        ("CONSENT_SHUTDOWN_GRACE_S", "-1"),
        ("CONSENT_SHUTDOWN_GRACE_S", "nan"),
        ("CONSENT_KAFKA_PARTITIONS", "0"),
        ("CONSENT_KAFKA_PARTITIONS", "nan"),
        ("CONSENT_KAFKA_PARTITIONS", "inf"),
        ("CONSENT_KAFKA_REPLICATION_FACTOR", "-3"),
        ("CONSENT_KAFKA_MIN_INSYNC_REPLICAS", "0"),
        ("CONSENT_KAFKA_REQUEST_TIMEOUT_MS", "0"),
        ("CONSENT_KAFKA_APPEND_TIMEOUT_MS", "nan"),
        ("CONSENT_POSTGRES_POOL_SIZE", "1"),
        ("CONSENT_POSTGRES_POOL_SIZE", ""),
    ],
)
def test_a_number_out_of_its_range_is_refused_by_name(name, value) -> None:
    with pytest.raises(SettingsError, match=f"^{name} must be a"):
        Settings.from_env({**PRODUCTION, name: value})


def test_a_count_must_be_a_whole_number() -> None:
    with pytest.raises(SettingsError, match="CONSENT_KAFKA_PARTITIONS must be a whole number"):
        Settings.from_env({**PRODUCTION, "CONSENT_KAFKA_PARTITIONS": "12.5"})
    assert (
        Settings.from_env(
            {**PRODUCTION, "CONSENT_KAFKA_PARTITIONS": "24"}
        ).kafka.subscriber_partitions
        == 24
    )  # type: ignore[union-attr]


def test_the_kafka_timeouts_are_taken_in_milliseconds() -> None:
    kafka = Settings.from_env(
        {
            **PRODUCTION,
            "CONSENT_KAFKA_REQUEST_TIMEOUT_MS": "3000",
            "CONSENT_KAFKA_APPEND_TIMEOUT_MS": "4500",
        }
    ).kafka
    assert kafka is not None
    assert (kafka.request_timeout_s, kafka.append_timeout_s) == (3.0, 4.5)
    assert Settings.from_env(PRODUCTION).kafka == KafkaLedgerSettings(
        bootstrap_servers=kafka.bootstrap_servers
    )


def test_more_in_sync_replicas_than_replicas_is_refused_by_name() -> None:
    env = {**PRODUCTION, "CONSENT_KAFKA_MIN_INSYNC_REPLICAS": "4"}
    with pytest.raises(SettingsError, match=r"CONSENT_KAFKA_MIN_INSYNC_REPLICAS \(4\) must not"):
        Settings.from_env(env)


def test_a_refresh_slower_than_an_observation_is_trusted_is_refused() -> None:
    with pytest.raises(SettingsError, match="CONSENT_FRESHNESS_REFRESH_MS must be below 2000"):
        Settings.from_env({**PRODUCTION, "CONSENT_FRESHNESS_REFRESH_MS": "2000"})


def test_numbers_in_range_are_taken() -> None:
    env = {
        **PRODUCTION,
        "CONSENT_FRESHNESS_REFRESH_MS": "20",
        "CONSENT_FRESHNESS_WAIT_MS": "250.5",
        "CONSENT_SHUTDOWN_GRACE_S": "0",
        "CONSENT_POSTGRES_POOL_SIZE": "2",
    }
    settings = Settings.from_env(env)
    assert settings.freshness.refresh_interval == 0.02
    assert settings.freshness.wait_bound == 0.2505
    assert (settings.shutdown_grace, settings.pool_size) == (0, 2)


def test_a_grpc_address_that_is_not_host_and_port_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="CONSENT_GRPC_LISTEN must be host:port"):
        Settings.from_env({**PRODUCTION, "CONSENT_GRPC_LISTEN": ""})


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("consent.internal", False),
    ],
)
def test_loopback_is_this_machine_only(host, loopback) -> None:
    assert is_loopback(host) is loopback


def test_cansend_answers_up_to_30_days_ahead_by_default_and_the_horizon_is_a_setting() -> None:
    assert Settings.from_env(EMBEDDED, embedded=True).cansend_future_horizon == timedelta(days=30)
    env = {"CONSENT_CANSEND_FUTURE_HORIZON_DAYS": "7.5"}
    horizon = Settings.from_env(env, embedded=True).cansend_future_horizon
    assert horizon == timedelta(days=7, hours=12)
    for bad in ("-1", "367", "nan", "soon"):
        with pytest.raises(SettingsError, match="CONSENT_CANSEND_FUTURE_HORIZON_DAYS"):
            Settings.from_env({"CONSENT_CANSEND_FUTURE_HORIZON_DAYS": bad}, embedded=True)


def test_ten_lines_a_minute_of_a_kind_by_default() -> None:
    settings = Settings.from_env(EMBEDDED, embedded=True)
    assert (settings.log_repeat_limit, settings.log_repeat_interval) == (10, 60)


@pytest.mark.parametrize(
    "env, refused",
    [
        ({"CONSENT_LOG_REPEAT_LIMIT": "-1"}, "CONSENT_LOG_REPEAT_LIMIT must be a finite number"),
        ({"CONSENT_LOG_REPEAT_LIMIT": "2.5"}, "CONSENT_LOG_REPEAT_LIMIT must be a whole number"),
        ({"CONSENT_LOG_REPEAT_INTERVAL_S": "0"}, "CONSENT_LOG_REPEAT_INTERVAL_S must be"),
    ],
)
def test_a_log_limit_out_of_range_is_refused_by_name(env, refused) -> None:
    with pytest.raises(SettingsError, match=refused):
        Settings.from_env(env, embedded=True)


def test_a_log_repeat_limit_of_zero_turns_it_off() -> None:
    assert Settings.from_env({"CONSENT_LOG_REPEAT_LIMIT": "0"}, embedded=True).log_repeat_limit == 0


def test_no_rate_limit_by_default() -> None:
    assert Settings.from_env(EMBEDDED, embedded=True).rate_limit is None


def test_a_default_rate_limit_is_read_with_its_burst() -> None:
    env = {"CONSENT_RATE_LIMIT_RPS": "200", "CONSENT_RATE_LIMIT_BURST": "500"}
    assert Settings.from_env(env, embedded=True).rate_limit == RateLimit(200, 500)
    only_rate = Settings.from_env({"CONSENT_RATE_LIMIT_RPS": "2.5"}, embedded=True)
    assert only_rate.rate_limit == RateLimit(2.5, 3)


@pytest.mark.parametrize(
    "env, refused",
    [
        ({"CONSENT_RATE_LIMIT_RPS": "0"}, "CONSENT_RATE_LIMIT_RPS must be a finite number above 0"),
        ({"CONSENT_RATE_LIMIT_RPS": "inf"}, "CONSENT_RATE_LIMIT_RPS must be a finite number"),
        (
            {"CONSENT_RATE_LIMIT_RPS": "5", "CONSENT_RATE_LIMIT_BURST": "0"},
            "CONSENT_RATE_LIMIT_BURST must be a finite number at least 1",
        ),
        ({"CONSENT_RATE_LIMIT_BURST": "5"}, "BURST needs CONSENT_RATE_LIMIT_RPS"),
    ],
)
def test_a_rate_limit_out_of_range_is_refused_by_name(env, refused) -> None:
    with pytest.raises(SettingsError, match=refused):
        Settings.from_env(env, embedded=True)


def test_the_database_and_write_timeouts_are_read_in_milliseconds() -> None:
    default = Settings.from_env(PRODUCTION)
    assert (default.postgres_timeout, default.write_timeout) == (1.5, 10.0)
    env = {**PRODUCTION, "CONSENT_POSTGRES_TIMEOUT_MS": "800", "CONSENT_WRITE_TIMEOUT_MS": "2500"}
    settings = Settings.from_env(env)
    assert (settings.postgres_timeout, settings.write_timeout) == (0.8, 2.5)


@pytest.mark.parametrize("name", ["CONSENT_POSTGRES_TIMEOUT_MS", "CONSENT_WRITE_TIMEOUT_MS"])
@pytest.mark.parametrize("value", ["0", "-5", "nan", "soon"])
def test_a_timeout_that_would_not_bound_anything_is_refused_by_name(name, value) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({**PRODUCTION, name: value})


def test_the_health_limits_are_the_provider_s_unless_set() -> None:
    assert Settings.from_env(PRODUCTION).health_limits == HealthLimits(opt_out=0.003, error=0.06)
    env = {**PRODUCTION, "CONSENT_OPT_OUT_RATE_LIMIT": "0.002", "CONSENT_ERROR_RATE_LIMIT": "0.05"}
    assert Settings.from_env(env).health_limits == HealthLimits(opt_out=0.002, error=0.05)


@pytest.mark.parametrize("value", ["6", "-0.1", "nan", "six"])
def test_a_health_limit_that_is_no_share_is_refused_by_name(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^CONSENT_ERROR_RATE_LIMIT must be a"):
        Settings.from_env({**PRODUCTION, "CONSENT_ERROR_RATE_LIMIT": value})


def test_the_opt_out_error_codes_are_twilio_s_21610_unless_set() -> None:
    assert Settings.from_env(PRODUCTION).opt_out_error_codes == frozenset({"21610"})
    env = {**PRODUCTION, "CONSENT_OPT_OUT_ERROR_CODES": " 21610, 21611,X-7 "}
    assert Settings.from_env(env).opt_out_error_codes == frozenset({"21610", "21611", "X-7"})


@pytest.mark.parametrize("value", ["", " ", "21610,", "21610,,21611", "216 10", "21610;21611"])
def test_opt_out_error_codes_that_would_match_nothing_are_refused_by_name(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^CONSENT_OPT_OUT_ERROR_CODES"):
        Settings.from_env({**PRODUCTION, "CONSENT_OPT_OUT_ERROR_CODES": value})


def test_retention_is_five_years_unless_set_to_whole_years() -> None:
    assert Settings.from_env(EMBEDDED, embedded=True).retention_years == 5
    assert (
        Settings.from_env(
            {**EMBEDDED, "CONSENT_RETENTION_YEARS": "7"}, embedded=True
        ).retention_years
        == 7
    )
    for bad in ("0", "2.5", "soon"):
        with pytest.raises(SettingsError, match="CONSENT_RETENTION_YEARS"):
            Settings.from_env({**EMBEDDED, "CONSENT_RETENTION_YEARS": bad}, embedded=True)


def test_serve_runs_its_projector_unless_told_projection_is_elsewhere() -> None:
    assert Settings.from_env(PRODUCTION).projector == "in-process"
    assert Settings.from_env({**PRODUCTION, "CONSENT_PROJECTOR": "off"}).projector == "off"
    with pytest.raises(SettingsError, match="CONSENT_PROJECTOR must be in-process or off"):
        Settings.from_env({**PRODUCTION, "CONSENT_PROJECTOR": "elsewhere"})


def test_a_process_that_serves_no_api_needs_no_tokens_file() -> None:
    without = {k: v for k, v in PRODUCTION.items() if k != "CONSENT_AUTH_TOKENS_FILE"}
    with pytest.raises(SettingsError, match="CONSENT_AUTH_TOKENS_FILE is required"):
        Settings.from_env(without)
    assert Settings.from_env(without, api=False).tokens_file is None


def test_the_embedded_database_cannot_leave_projection_to_another_process() -> None:
    with pytest.raises(SettingsError, match="CONSENT_PROJECTOR=off needs CONSENT_POSTGRES_DSN"):
        Settings.from_env({"CONSENT_PROJECTOR": "off"}, embedded=True)
    given = {"CONSENT_PROJECTOR": "off", "CONSENT_POSTGRES_DSN": "postgresql://db/consent"}
    assert Settings.from_env(given, embedded=True).projector == "off"


def test_imports_prune_old_append_turns_once_an_hour_unless_told() -> None:
    assert Settings.from_env({}, embedded=True).import_prune_interval == 3600
    env = {"CONSENT_IMPORT_PRUNE_INTERVAL_S": "0"}  # every import prunes, as before
    assert Settings.from_env(env, embedded=True).import_prune_interval == 0
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(SettingsError, match="CONSENT_IMPORT_PRUNE_INTERVAL_S"):
            Settings.from_env({"CONSENT_IMPORT_PRUNE_INTERVAL_S": bad}, embedded=True)


def test_an_import_s_turn_to_append_lasts_two_minutes_unless_told() -> None:
    assert Settings.from_env({}, embedded=True).import_append_lease == 120
    env = {"CONSENT_IMPORT_APPEND_LEASE_S": "7.5"}
    assert Settings.from_env(env, embedded=True).import_append_lease == 7.5
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(SettingsError, match=r"^CONSENT_IMPORT_APPEND_LEASE_S must be a"):
            Settings.from_env({"CONSENT_IMPORT_APPEND_LEASE_S": bad}, embedded=True)


def test_connection_limits_are_on_by_default_but_the_age() -> None:
    limits = Settings.from_env(EMBEDDED, embedded=True).connections
    assert limits == ConnectionLimits()
    assert limits.max_concurrent_streams == 1000 and limits.max_idle == 900
    assert limits.keepalive_time == 60 and limits.keepalive_timeout == 20
    assert limits.max_age is None and limits.max_age_grace is None


def test_connection_limits_are_read_in_seconds_and_0_turns_idle_and_age_off() -> None:
    env = {
        "CONSENT_GRPC_MAX_CONCURRENT_STREAMS": "8",
        "CONSENT_GRPC_KEEPALIVE_TIME_S": "30",
        "CONSENT_GRPC_KEEPALIVE_TIMEOUT_S": "0.5",
        "CONSENT_GRPC_MIN_PING_INTERVAL_S": "10",
        "CONSENT_GRPC_MAX_PING_STRIKES": "3",
        "CONSENT_GRPC_MAX_CONNECTION_IDLE_S": "0",
        "CONSENT_GRPC_MAX_CONNECTION_AGE_S": "3600",
        "CONSENT_GRPC_MAX_CONNECTION_AGE_GRACE_S": "0",
    }
    assert Settings.from_env(env, embedded=True).connections == ConnectionLimits(
        max_concurrent_streams=8,
        keepalive_time=30,
        keepalive_timeout=0.5,
        min_ping_interval=10,
        max_ping_strikes=3,
        max_idle=None,
        max_age=3600,
        max_age_grace=0,
    )


@pytest.mark.parametrize(
    ("name", "value", "refused"),
    [
        ("CONSENT_GRPC_MAX_CONCURRENT_STREAMS", "0", "at least 1"),
        ("CONSENT_GRPC_MAX_CONCURRENT_STREAMS", "2.5", "a whole number"),
        ("CONSENT_GRPC_MAX_CONCURRENT_STREAMS", "3000000000", "at most 2147483647"),
        ("CONSENT_GRPC_KEEPALIVE_TIME_S", "0", "above 0"),
        ("CONSENT_GRPC_KEEPALIVE_TIME_S", "soon", "must be a number"),
        ("CONSENT_GRPC_KEEPALIVE_TIMEOUT_S", "-1", "above 0"),
        ("CONSENT_GRPC_KEEPALIVE_TIMEOUT_S", "0.0001", "at least 0.001"),
        ("CONSENT_GRPC_MIN_PING_INTERVAL_S", "nan", "finite number above 0"),
        ("CONSENT_GRPC_MAX_PING_STRIKES", "0", "at least 1"),
        ("CONSENT_GRPC_MAX_CONNECTION_IDLE_S", "-5", "at least 0"),
        ("CONSENT_GRPC_MAX_CONNECTION_IDLE_S", "inf", "finite"),
        ("CONSENT_GRPC_MAX_CONNECTION_AGE_S", "3000000", "at most 2147483 seconds"),
        ("CONSENT_GRPC_MAX_CONNECTION_AGE_GRACE_S", "60", "needs CONSENT_GRPC_MAX_CONNECTION_AGE"),
    ],
)
def test_a_bad_connection_limit_is_refused_by_name(name: str, value: str, refused: str) -> None:
    with pytest.raises(SettingsError, match=f"{name}.*{refused}"):
        Settings.from_env({name: value}, embedded=True)
