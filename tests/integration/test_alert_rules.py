"""The chart's alert rules under a real promtool: they are valid, and each alert fires on
the series of tests/monitoring/alerts_test.yaml that should fire it, and only then."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "gke-ingress-timeout" / "files" / "alerts.yaml"
TESTS = ROOT / "tests" / "monitoring" / "alerts_test.yaml"


def promtool(tools: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools["promtool"]), *args], capture_output=True, text=True, timeout=120
    )


def test_the_rules_are_valid(operator_tools: dict[str, Path]) -> None:
    done = promtool(operator_tools, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout


def test_each_alert_fires_on_its_series_and_only_then(operator_tools: dict[str, Path]) -> None:
    done = promtool(operator_tools, "test", "rules", str(TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_promtool_case() -> None:
    rules = RULES.read_text()
    cases = TESTS.read_text()
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines() if "- alert:" in line]
    assert len(alerts) == 7
    for alert in alerts:
        assert f"alertname: {alert}\n" in cases, f"{alert} has no promtool test"
