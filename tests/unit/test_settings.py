"""``Settings.from_env``: defaults, and a clear error naming a malformed variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.settings import Settings, SettingsError, TlsSettings, host_and_port

EMBEDDED: dict[str, str] = {}


def test_cansend_reads_the_replica_by_default() -> None:
    assert Settings.from_env(EMBEDDED, embedded=True).cansend_reads == "replica"


def test_cansend_can_read_postgres_instead() -> None:
    env = {"CONSENT_CANSEND_READS": "postgres"}
    assert Settings.from_env(env, embedded=True).cansend_reads == "postgres"


def test_an_unknown_read_mode_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="CONSENT_CANSEND_READS must be replica or postgres"):
        Settings.from_env({"CONSENT_CANSEND_READS": "redis"}, embedded=True)


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
