"""`condition.warning_threshold` (CLMC alert levels OK, WARNING, CRITICAL): carried into the
alert rule; refused, located, on a deadman alert or when it is not a number."""

from __future__ import annotations

from flame.sandbox.demo import demo_template
from flame.sandbox.up import resolve_topology
from flame.topology.loader import load_topology
from flame.tosca import validate_texts
from flame.tosca.validator import ValidationResult

TOPOLOGY = load_topology(resolve_topology("sandbucket"))


def validate(text: str) -> ValidationResult:
    return validate_texts({"svc.yaml": text}, topology=TOPOLOGY)


def test_warning_threshold_reaches_the_alert_rule() -> None:
    text = demo_template().replace(
        "threshold: 10\n", "threshold: 10\n              warning_threshold: 8\n"
    )
    result = validate(text)
    assert result.model is not None, [str(d) for d in result.diagnostics]
    rule = result.model.alert("vod_slow_at_bristol")
    assert (rule.threshold, rule.warning_threshold) == (10.0, 8.0)
    assert result.model.alert("vod_quiet_at_bristol").warning_threshold is None


def test_warning_threshold_must_be_a_number_and_not_on_deadman() -> None:
    bad = demo_template().replace(
        "threshold: 10\n", "threshold: 10\n              warning_threshold: high\n"
    )
    result = validate(bad)
    assert result.model is None
    (diag,) = [d for d in result.diagnostics if "warning_threshold" in d.message]
    assert diag.code == "E820"
    assert diag.position.line == bad.splitlines().index("              warning_threshold: high") + 1
    deadman = demo_template().replace(
        "threshold: 1\n", "threshold: 1\n              warning_threshold: 2\n"
    )
    result = validate(deadman)
    assert any(
        "warning_threshold" in d.message and "deadman" in d.message for d in result.diagnostics
    )
