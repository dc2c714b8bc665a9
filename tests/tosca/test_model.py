"""The service model built from a valid template is what the orchestrator, SFEMC and CLMC need
(ORCH-8, ORCH-9, SFEMC-2)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from flame.topology.loader import load_topology
from flame.tosca import (
    Comparison,
    EndpointState,
    EventType,
    ValidationFailed,
    load_service,
    validate_texts,
)

ROOT = Path(__file__).resolve().parents[2]
VOD = ROOT / "examples" / "vod-edge-cache" / "service.yaml"
SANDPIT = ROOT / "examples" / "topology" / "sandpit.yaml"


@pytest.fixture(scope="module")
def model():
    return load_service([VOD], topology=load_topology(SANDPIT))


def test_identity_and_functions(model):
    assert (model.sfc, model.sfci) == ("vod", "vod-1")
    assert [sf.name for sf in model.service_functions] == ["origin", "cache"]
    origin = model.sf("origin")
    # concat + get_input resolved before deployment
    assert origin.fqdn == "origin.vod.flame.example"
    assert origin.ports[0].port == 8080
    assert origin.health_check is not None
    assert origin.health_check.port == "http"
    assert origin.health_check.interval_s == 1.0
    assert origin.resources.memory_bytes == 512_000_000
    assert origin.source.endswith("service.yaml:17:5")


def test_environment_functions_are_resolved(model):
    env = dict(model.sf("cache").environment)
    assert env == {"ORIGIN": "http://origin.vod.flame.example", "CACHE_SIZE": "1GB"}


def test_chain_and_initial_states(model):
    assert [(e.source, e.target) for e in model.chain] == [("cache", "origin")]
    states = model.initial_states()
    assert states[("metro-london", "origin")] is EndpointState.CONNECTED
    assert states[("edge-bristol", "cache")] is EndpointState.BOOTED
    assert states[("edge-bath", "cache")] is EndpointState.PLACED
    area = model.initial_policies[0].area
    assert area is not None
    assert area.radius_km == 150


def test_alerts_and_state_changes(model):
    slow = model.alert("slow_at_bristol")
    assert slow.event_type is EventType.THRESHOLD
    assert (slow.measurement, slow.field) == ("sr_requests", "response_time")
    assert slow.comparison is Comparison.GT
    assert slow.comparison.holds(81, slow.threshold)
    assert not slow.comparison.holds(80, slow.threshold)
    assert dict(slow.tags) == {"fqdn": "vod.flame.example", "sr": "sr-ue-1"}
    assert slow.notify_sfemc
    quiet = model.alert("quiet_at_bristol")
    assert quiet.webhooks == ("https://hooks.vod-provider.example/flame/vod",)
    by_trigger = {p.trigger: p for p in model.state_change_policies}
    assert by_trigger["slow_at_bristol"].alert == "slow_at_bristol"
    change = by_trigger["slow_at_bristol"].changes[0]
    assert (change.cluster, change.sf, change.state) == ("edge-bristol", "cache", "connected")


def test_model_is_immutable_and_serialisable(model):
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.sfc = "other"
    data = json.loads(json.dumps(model.to_dict()))
    assert data["service_functions"][1]["upstream"] == ["origin"]
    assert data["alert_rules"][0]["event_type"] == "threshold"


def test_texts_validate_like_files():
    result = validate_texts({"upload.yaml": VOD.read_text()})
    assert result.ok, [str(d) for d in result.diagnostics]
    assert result.model is not None
    assert result.model.sf("cache").fqdn == "vod.flame.example"


def test_load_service_raises_with_every_error(tmp_path):
    broken = (
        VOD.read_text()
        .replace("cache: booted", "cache: bootd")
        .replace("image: vod-origin:1.0", "image: 7")
    )
    path = tmp_path / "broken.yaml"
    path.write_text(broken)
    with pytest.raises(ValidationFailed) as caught:
        load_service([path])
    codes = sorted(d.code for d in caught.value.diagnostics)
    # both misspelt states are reported; the state change on the broken one does not cascade
    assert codes == ["E402", "E801", "E801"]
    body = caught.value.as_dict()
    assert body["error"] == "validation_failed"
    diagnostics = body["diagnostics"]
    assert isinstance(diagnostics, list)
    assert len(diagnostics) == 3


def test_plain_tosca_is_not_a_flame_service():
    standard = ROOT / "tests" / "tosca" / "standard" / "network_ports.yaml"
    with pytest.raises(ValidationFailed) as caught:
        load_service([standard])
    assert [d.code for d in caught.value.diagnostics] == ["E813"]
