"""The load test's SLO verdict, each branch (the locustfile sets Locust's exit code from it)."""

from __future__ import annotations

import pytest

from loadtests.slo import BROKEN, MET, VOID, verdict


@pytest.mark.parametrize(
    ("fail_ratio", "p95", "cpu_bound", "code", "said"),
    [
        (0.0, 120.0, False, MET, "SLO met"),
        (0.009, 499.0, False, MET, "SLO met"),  # failures within the tolerated ratio do not fail the run
        (0.02, 100.0, False, BROKEN, "failure ratio 0.0200 > 0.01"),
        (0.0, 501.0, False, BROKEN, "p95 501 ms > 500 ms"),
        (0.5, 900.0, False, BROKEN, "failure ratio 0.5000 > 0.01; p95 900 ms > 500 ms"),
        (0.0, 10.0, True, VOID, "VOID"),  # Locust measured itself: neither met nor broken
        (0.9, 900.0, True, VOID, "VOID"),
    ],
)
def test_each_branch_of_the_verdict(fail_ratio: float, p95: float, cpu_bound: bool, code: int, said: str):
    got, message = verdict(fail_ratio, p95, 0.01, 500.0, cpu_bound)
    assert got == code and said in message
