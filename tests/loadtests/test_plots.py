"""The pictures of speed (core/plots.py): the benchmark's latency against throughput and the load
test's latency over time draw what their numbers say, on axes that hold every point."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.plots import PALETTE, Line, chart, ticks
from loadtests.__main__ import plot_history
from loadtests.bench import TRITON, Run, plot


def _pixels(img: Image.Image, colour: tuple[int, int, int]) -> int:
    return int((np.asarray(img.convert("RGB")) == np.array(colour, np.uint8)).all(axis=-1).sum())


@pytest.mark.parametrize(
    "lo, hi, log, expected",
    [
        (0.0, 10.0, False, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]),
        (0.3, 40.0, True, [0.5, 1.0, 2.0, 5.0, 10.0, 20.0]),
        (950.0, 5100.0, False, [1000.0, 2000.0, 3000.0, 4000.0, 5000.0]),
    ],
)
def test_ticks_are_round_and_inside_the_range(lo: float, hi: float, log: bool, expected: list[float]):
    assert ticks(lo, hi, log) == pytest.approx(expected)


def test_a_chart_draws_each_line_in_its_colour_and_says_when_it_has_no_data():
    lines = [Line("a", [(1, 1), (2, 4), (3, 9)], PALETTE[0]), Line("b", [(1, 2), (3, 1)], PALETTE[3], dashed=True)]
    img = chart(lines, "t", "x", "y")
    assert _pixels(img, PALETTE[0]) > 200 and _pixels(img, PALETTE[3]) > 50
    empty = chart([], "t", "x", "y")
    assert _pixels(empty, PALETTE[0]) == 0


def test_the_bench_picture_has_a_panel_per_endpoint_and_a_line_per_server(tmp_path: Path):
    runs = []
    for target, colour_rank, kinds in (
        (TRITON, 0, ("v2 JSON", "v2 binary")),
        ("ee559", 1, ("friendly JSON", "v2 JSON", "v2 binary")),
    ):
        for kind in kinds:
            for c in (1, 8, 32):
                for rps in (1000.0 * c**0.5 * (1 + colour_rank), 1100.0 * c**0.5 * (1 + colour_rank)):
                    runs.append(Run(target, kind, c, rps, c / rps * 1e3, 3 * c / rps * 1e3))
    runs.append(Run("ee559", "v2 binary", 64, 99.0, 1.0, 2.0, client_cpu=0.95))  # VOID: left out
    path = plot(runs, tmp_path / "bench.png", "lenet")
    with Image.open(path) as img:
        assert img.size == (3 * 640, 420)
        panels = [img.crop((i * 640, 0, (i + 1) * 640, 420)) for i in range(3)]
        for panel in panels:  # triton (first colour) and ours (second) in every panel
            assert _pixels(panel, PALETTE[0]) > 100 and _pixels(panel, PALETTE[1]) > 100


def test_the_loadtest_picture_reads_locusts_history(tmp_path: Path):
    history = tmp_path / "report_stats_history.csv"
    fields = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%", "95%", "99%"]
    with open(history, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerow(dict(zip(fields, [100, 0, "", "Aggregated", 0, 0, "N/A", "N/A", "N/A"])))  # before any answer
        w.writerow(dict(zip(fields, [100, 4, "", "Aggregated", 0, 0, 0, 0, 0])))  # an empty window
        for t in range(1, 11):
            w.writerow(dict(zip(fields, [100 + t, 4, "", "Aggregated", 50 + t, 0, 3, 8, 12])))
            w.writerow(dict(zip(fields, [100 + t, 4, "POST", "/classify json", 40, 0, 2, 7, 11])))
    path = plot_history(history, tmp_path / "latency.png", "http://x")
    assert path is not None
    with Image.open(path) as img:
        assert img.size == (1280, 420)
        assert _pixels(img.crop((0, 0, 640, 420)), PALETTE[2]) > 100  # the p99 line
    assert plot_history(tmp_path / "missing.csv", tmp_path / "none.png", "http://x") is None
