"""schemas/openapi.yaml describes the live API: schemathesis drives a real
`replicator run` from the spec and finds no 5xx and no answer that breaks
the spec. The daemon under test selects no database for backups and accepts
only inline `file` targets, so generated requests never reach out of this
machine."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.support.daemon import TOKEN, Daemon

ROOT = Path(__file__).resolve().parent.parent
schema = schemathesis.openapi.from_path(ROOT / "schemas" / "openapi.yaml")


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory, primary_server, replica_server):
    tmp = tmp_path_factory.mktemp("fuzz")
    d = Daemon(tmp, primary_server, replica_server, "no_such_database_", reconcile={"interval": 3600},
               api={"inline_targets": ["file"]},
               backup={"targets": {"local": {"type": "file", "path": str(tmp / "out" / "f-{timestamp}.tar")}}})
    d.start()
    yield d
    assert d.stop() == 0


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.faults
def test_api_matches_its_openapi_spec(case, fuzz_daemon):
    # a valid request may still be refused (409 while a backup runs, 404 for an unknown target)
    case.call_and_validate(base_url=fuzz_daemon.url, headers={"Authorization": f"Bearer {TOKEN}"},
                           excluded_checks=[positive_data_acceptance])


def test_spec_request_schema_is_the_one_the_server_validates_with():
    spec = yaml.safe_load((ROOT / "schemas" / "openapi.yaml").read_text())["components"]["schemas"]
    served = json.loads((ROOT / "schemas" / "backup-request.schema.json").read_text())["oneOf"]
    assert spec["NamedTarget"]["properties"] == served[0]["properties"]
    assert spec["InlineTarget"]["properties"] == {
        k: {**v, "type": "string"} if "enum" in v else v for k, v in served[1]["properties"].items()}
    assert spec["InlineTarget"]["required"] == served[1]["required"]


def test_spec_lists_exactly_the_states_the_code_reports():
    """The OpenAPI file's enums are the code's vocabulary: a state added to
    status.py without the spec (or the reverse) fails here, not at a client."""
    from reconciler.status import STATES, JournalState
    status = yaml.safe_load((ROOT / "schemas" / "openapi.yaml").read_text())["paths"]["/status"]["get"]
    body = status["responses"]["200"]["content"]["application/json"]["schema"]
    if "$ref" in body:
        body = yaml.safe_load((ROOT / "schemas" / "openapi.yaml").read_text())["components"]["schemas"][
            body["$ref"].rsplit("/", 1)[-1]]
    props = body["properties"]
    assert props["databases"]["items"]["properties"]["state"]["enum"] == list(STATES)
    assert props["journal"]["items"]["properties"]["state"]["enum"] == [s.value for s in JournalState]
