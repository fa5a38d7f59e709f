"""The load test's verdict, as a pure function of what Locust measured (kept apart from the
locustfile so it can be tested without importing Locust)."""

from __future__ import annotations

MET, BROKEN, VOID = 0, 1, 2  # process exit codes


def verdict(
    fail_ratio: float, p95_ms: float, max_fail_ratio: float, max_p95_ms: float, locust_cpu_bound: bool
) -> tuple[int, str]:
    """(exit code, message): VOID when Locust itself was CPU-bound (its latencies measure the load
    generator), BROKEN when the failure ratio or p95 is over its bound, else MET. The exit code is
    always set, so failures within the tolerated ratio do not fail the run (Locust's own default is
    1 on any failure)."""
    if locust_cpu_bound:
        return VOID, (
            "VOID run: Locust's own CPU usage went above 90%; its figures are not trusted "
            "(use fewer users, or run Locust on other cores)"
        )
    broken = []
    if fail_ratio > max_fail_ratio:
        broken.append(f"failure ratio {fail_ratio:.4f} > {max_fail_ratio:g}")
    if p95_ms > max_p95_ms:
        broken.append(f"p95 {p95_ms:.0f} ms > {max_p95_ms:g} ms")
    if broken:
        return BROKEN, "SLO broken: " + "; ".join(broken)
    return (
        MET,
        f"SLO met: failure ratio {fail_ratio:.4f} <= {max_fail_ratio:g}, p95 {p95_ms:.0f} ms <= {max_p95_ms:g} ms",
    )
