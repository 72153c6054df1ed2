"""The service's OpenAPI document is valid, and a live worker keeps its promises under fuzzing.

Schemathesis generates requests for every operation from `/openapi.json` as a real uvicorn worker
serves it (tenant routes with a tenant's key, the rest with the admin token), valid inputs and, where
an operation takes a body or a query, invalid ones, and checks each answer: never a 5xx; its status
and content type documented and its body matching the document; invalid input refused. Not checked:
that every valid input is accepted, which the document cannot promise (JSON Schema counts 5.0 as an
integer where the strict models refuse it; a limit's requests x window bound spans two fields; a
cursor is any string the service issued). Lab mode stays off: its fault routes would let the fuzzer
arm crashes and injected 503s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from live_app import Worker, uvicorn_worker
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    status_code_conformance,
)
from schemathesis.specs.openapi.checks import response_schema_conformance

from reference_impl.app import create_app
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 25
"""Enough to reach every operation's branches (bad ids, bad bodies, pages) within seconds."""


def test_the_document_is_valid_and_declares_every_path_parameter(settings: Settings) -> None:
    document = create_app(settings).openapi()
    validate(document)
    for path, operations in document["paths"].items():
        in_template = set(re.findall(r"{(\w+)}", path))
        for method, operation in operations.items():
            declared = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
            assert declared == in_template, f"{method.upper()} {path} declares {declared or 'none'}"


@pytest.fixture(scope="module")
def worker(settings: Settings) -> Iterator[Worker]:
    with uvicorn_worker(settings, lab_mode=False) as running:
        yield running


@pytest.fixture(scope="module")
def headers(worker: Worker, settings: Settings) -> dict[str, dict[str, str]]:
    """Credentials by route prefix: a tenant's key for /v1, the admin token elsewhere."""
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    # Limits far above what the fuzzer sends, so that it explores the routes rather than the 429.
    r = httpx.post(f"{worker.url}/admin/tenants", headers=admin,
                   json={"name": "fuzzer", "plan": "pro", "limits": {"requests": 1_000_000, "window_s": 1}})
    assert r.status_code == 201, r.text
    return {"/v1": {"Authorization": f"Bearer {r.json()['api_key']}"}, "": admin}


@pytest.fixture(scope="module")
def served_schema(worker: Worker) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{worker.url}/openapi.json")


def _operations() -> list[tuple[str, str, GenerationMode]]:
    """Every operation with valid inputs, and those that take a body or a query with invalid ones too
    (a path parameter is any string, so it has no invalid value)."""
    # The document does not depend on the servers: an app that never starts lists the operations.
    offline = Settings(database_url="postgresql://offline/none", redis_url="redis://offline:1/0", lab_mode=False)
    found = []
    for path, operations in create_app(offline).openapi()["paths"].items():
        for method, operation in operations.items():
            found.append((method.upper(), path, GenerationMode.POSITIVE))
            if "requestBody" in operation or any(p["in"] == "query" for p in operation.get("parameters", ())):
                found.append((method.upper(), path, GenerationMode.NEGATIVE))
    return found


@pytest.mark.parametrize(("method", "path", "mode"), _operations(), ids=str)
def test_fuzzed_requests_get_no_5xx_and_match_the_document(method: str, path: str, mode: GenerationMode,
                                                           worker: Worker, served_schema: schemathesis.BaseSchema,
                                                           headers: dict[str, dict[str, str]]) -> None:
    credentials = headers["/v1"] if path.startswith("/v1") else headers[""]

    @given(case=served_schema[path][method].as_strategy(mode))
    @hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=worker.url, headers=credentials,
                               checks=[not_a_server_error, response_schema_conformance, content_type_conformance,
                                       status_code_conformance, negative_data_rejection])

    try:
        fuzz()
    except BaseException:
        print(f"--- the worker's log ---\n{worker.log()}")
        raise
