"""Prometheus alerting rules (config/alerts.yml): valid, loaded by the docker-compose Prometheus, on the dashboard,
built on metrics that exist, and unit-tested with ``promtool test rules`` (tests/alerts_test.yml): each rule fires
on a failing series and stays quiet on a healthy one."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_compose import DASHBOARD, PROMETHEUS, ROOT, SERVICES, registry_series

RULES_FILE = ROOT / "config" / "alerts.yml"
RULES = yaml.safe_load(RULES_FILE.read_text())
UNIT_TESTS = ROOT / "tests" / "alerts_test.yml"
ALERTS = {rule["alert"]: rule for group in RULES["groups"] for rule in group["rules"]}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (scripts/test.sh installs Debian's prometheus package as root)")


def test_the_issue_list_of_alerts_is_there() -> None:
    assert {"CorestreamProcessorStalled", "CorestreamConsumerLagRising", "CorestreamDeadLetterRateHigh",
            "CorestreamSinkErrors", "CorestreamModelReloadFailed", "CorestreamLagButNothingClassified",
            "CorestreamProcessorDown"} <= set(ALERTS)
    for name, rule in ALERTS.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_rules_use_only_metrics_that_exist() -> None:
    used = {metric for rule in ALERTS.values() for metric in re.findall(r"\bcorestream_\w+", rule["expr"])}
    assert used and used <= registry_series(), sorted(used - registry_series())


def test_every_rule_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [case for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for name in ALERTS:
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == name}
        assert outcomes == {True, False}, f"{name}: needs a case where it fires and one where it stays quiet"


def test_prometheus_in_compose_loads_the_rules() -> None:
    assert PROMETHEUS["rule_files"] == ["alerts.yml"]  # relative to prometheus.yml, in the repo and in the container
    assert "./config/alerts.yml:/etc/prometheus/alerts.yml:ro" in SERVICES["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]


def test_dashboard_shows_the_alerts() -> None:
    panels = [panel for panel in DASHBOARD["panels"] if any("ALERTS" in target["expr"]
                                                           for target in panel.get("targets", []))]
    assert panels and panels[0]["gridPos"]["y"] <= 1, "an alert panel at the top of the dashboard"
    annotations = [item for item in DASHBOARD["annotations"]["list"] if "ALERTS" in item.get("expr", "")]
    assert annotations and annotations[0]["enable"] is True


@needs_promtool
def test_promtool_checks_config_and_rules() -> None:
    for args in (["check", "config", str(ROOT / "config" / "prometheus.yml")], ["check", "rules", str(RULES_FILE)]):
        result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(ALERTS)} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    result = subprocess.run([PROMTOOL, "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    # The tests are not vacuous: a rule that can never fire fails them.
    broken = tmp_path / "config"
    broken.mkdir()
    (broken / "alerts.yml").write_text(RULES_FILE.read_text().replace(
        "expr: corestream_model_reload_failed == 1", "expr: corestream_model_reload_failed == 2"))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "alerts_test.yml").write_text(UNIT_TESTS.read_text())
    failed = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "tests" / "alerts_test.yml")],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0 and "CorestreamModelReloadFailed" in failed.stdout + failed.stderr
