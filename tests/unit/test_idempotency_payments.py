"""The payment's data renders the bytes the service sends: the declined response is the service's problem document."""

from __future__ import annotations

from reference_impl.common import problem
from reference_impl.idempotency import payments


def test_the_declined_response_is_the_services_problem_document() -> None:
    declined = payments.declined_response()
    expected = problem.Problem(402, "payment-declined", "The payment provider declined the charge.")
    assert (declined.status, declined.body) == (402, expected.encode())
    assert declined.headers == (("content-type", problem.PROBLEM_CONTENT_TYPE),)
    assert (payments.PROBLEM_BASE, payments.PROBLEM_CONTENT_TYPE) == (problem.PROBLEM_BASE, problem.PROBLEM_CONTENT_TYPE)
