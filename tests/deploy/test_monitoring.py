"""The Prometheus alert rules and the Grafana dashboard in deploy/monitoring: valid
for promtool, their alerts fire when they should (promtool's own rule tests), and
every metric they name is one the service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from ledger.policy import Decision, Reason
from ledger.ports import AccessRecord
from services.freshness import FreshnessStatus
from services.metrics import ServiceMetrics
from tests.deploy import tools

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = json.loads((MONITORING / "dashboard.json").read_text())


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools.promtool()), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def dashboard_queries() -> list[str]:
    return [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]


def test_the_alert_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", ALERTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 14 rules found" in done.stdout


def test_each_alert_fires_on_its_cause_and_only_then() -> None:
    done = promtool("test", "rules", "alerts.test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {
        case["alertname"]
        for test in yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    assert tested == {rule["alert"] for rule in rules}  # every alert seen firing


def test_the_rule_tests_fail_when_an_alert_would_not_fire(tmp_path: Path) -> None:
    shutil.copy(MONITORING / "alerts.test.yaml", tmp_path)
    rules = yaml.safe_load(ALERTS.read_text())
    for rule in rules["groups"][0]["rules"]:
        if rule["alert"] == "ConsentLedgerFailingClosed":
            rule["expr"] = rule["expr"].replace("> 0", "> 1000")
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(rules))
    done = promtool("test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert done.returncode != 0
    assert "ConsentLedgerFailingClosed" in done.stdout + done.stderr


def test_the_dashboards_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool checks PromQL in rule files: each query becomes a recording rule, with
    # Grafana's $__rate_interval as a concrete range.
    rules = [
        {"record": f"dashboard:query{n}", "expr": q.replace("$__rate_interval", "5m")}
        for n, q in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x", "expr": "sum by ("}]}]})
    )
    assert promtool("check", "rules", str(broken)).returncode != 0


def test_the_dashboard_is_importable_grafana_json() -> None:
    assert DASHBOARD["uid"] and DASHBOARD["title"]
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
    assert [v["name"] for v in DASHBOARD["templating"]["list"]] == ["datasource"]


@dataclass
class _Watched:
    status: FreshnessStatus


@dataclass
class _Replica:
    size: int
    loads: int
    confirmed_at: float = 0.0
    unreadable: int = 0


def exported_metrics() -> set[str]:
    """Every sample name a scrape of the service can hold, each labelled family seen."""
    metrics = ServiceMetrics(_Watched(FreshnessStatus(observed_at=0.0)), _Replica(1, 1))
    metrics.decided("CanSend", Decision(True, Reason.CONSENT_ACTIVE))
    metrics.failed("CanSend", "UNAVAILABLE")
    metrics.candidates = lambda: (2, 1)
    read = AccessRecord(datetime.now(UTC), "auditor", "GetProofPacket", "acme", "req")
    metrics.audit_read(read, True)
    metrics.audit_read(read, False)
    metrics.tokens_loaded_at = 0.0
    return {sample.name for family in metrics.registry().collect() for sample in family.samples}


def test_every_metric_the_alerts_and_dashboard_name_is_exported() -> None:
    exported = exported_metrics()
    texts = [ALERTS.read_text(), *dashboard_queries()]
    named = {m for text in texts for m in re.findall(r"\b(?:consent|process)_[a-z_]+", text)}
    assert "consent_cansend_decisions_total" in named
    assert named <= exported, named - exported
    reasons = {r.value for r in Reason}
    for text in texts:
        for reason in re.findall(r'reason="([a-z_]+)"', text):
            assert reason in reasons, reason
