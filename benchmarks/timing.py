"""Paired timing: every reported figure is a ratio of two timings taken in the same process.

A and B are timed in interleaved pairs (A,B then B,A, alternating, so neither always runs on a
warmer cache), after warm-up calls that are thrown away. Each pair gives one ratio A/B; a figure is
the median of those ratios with its interquartile range, which is robust to the bursts of load
that a shared machine produces. On a GPU every timing is bracketed by a device synchronisation.
"""

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch


def device_sync(device: torch.device) -> Callable[[], None]:
    """A function that waits for all queued work on ``device`` (nothing to wait for on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class Figure:
    """One row of the table: ratio A/B over interleaved pairs, and how it compares to a target."""

    name: str
    a: str
    b: str
    ratios: list[float] = field(repr=False)
    times_a: list[float] = field(repr=False)  # seconds per call of A, one per pair
    times_b: list[float] = field(repr=False)
    repeats: list[int] = field(default_factory=lambda: [1, 1])  # calls of A and of B per timing
    target: str | None = None  # e.g. "<= 1.15" or ">= 10"
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def iqr(self) -> tuple[float, float]:
        if len(self.ratios) < 2:
            return self.ratios[0], self.ratios[0]
        q = statistics.quantiles(self.ratios, n=4, method="inclusive")
        return q[0], q[2]

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        op, value = self.target.split()
        return self.median <= float(value) if op == "<=" else self.median >= float(value)

    def as_dict(self) -> dict:
        q25, q75 = self.iqr
        out = {k: v for k, v in asdict(self).items() if k not in ("ratios", "times_a", "times_b")}
        out.update(
            ratio_median=self.median,
            ratio_q25=q25,
            ratio_q75=q75,
            pairs=len(self.ratios),
            time_a_median_s=statistics.median(self.times_a),
            time_b_median_s=statistics.median(self.times_b),
            met=self.met,
            ratios=self.ratios,
        )
        return out


def _timed(fn: Callable[[], object], inner: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    sync()
    return (time.perf_counter() - start) / inner


def compare(
    name: str,
    a: tuple[str, Callable[[], object]],
    b: tuple[str, Callable[[], object]],
    *,
    pairs: int,
    warmup: int,
    min_time: float,
    sync: Callable[[], None],
    target: str | None = None,
    note: str = "",
) -> Figure:
    """Time ``a`` and ``b`` in ``pairs`` interleaved pairs; each timing repeats its call until it
    lasts about ``min_time`` seconds (the counts are fixed after warm-up, one for A, one for B)."""
    (label_a, fn_a), (label_b, fn_b) = a, b
    for _ in range(warmup):
        fn_a()
        fn_b()
    repeats = [max(1, min(1000, math.ceil(min_time / max(_timed(fn, 1, sync), 1e-7)))) for fn in (fn_a, fn_b)]
    times_a, times_b = [], []
    for i in range(pairs):
        if i % 2 == 0:
            ta = _timed(fn_a, repeats[0], sync)
            tb = _timed(fn_b, repeats[1], sync)
        else:
            tb = _timed(fn_b, repeats[1], sync)
            ta = _timed(fn_a, repeats[0], sync)
        times_a.append(ta)
        times_b.append(tb)
    return Figure(name, label_a, label_b, [x / y for x, y in zip(times_a, times_b)], times_a, times_b, repeats, target, note)


def from_pairs(name: str, label_a: str, label_b: str, times_a: list[float], times_b: list[float], **kwargs) -> Figure:
    """A Figure from timings that were interleaved elsewhere (e.g. inside a Trainer's epochs)."""
    return Figure(name, label_a, label_b, [x / y for x, y in zip(times_a, times_b)], list(times_a), list(times_b), **kwargs)


def format_table(figures: list[Figure]) -> str:
    """Fixed-width table: one row per figure, ratio median [IQR], pairs, target and verdict."""
    header = ["figure", "A / B", "median", "IQR", "pairs", "A (ms)", "B (ms)", "target", ""]
    rows = []
    for f in figures:
        q25, q75 = f.iqr
        verdict = {True: "met", False: "MISSED", None: ""}[f.met]
        rows.append([
            f.name, f"{f.a} / {f.b}", f"{f.median:.3f}", f"{q25:.3f}-{q75:.3f}", str(len(f.ratios)),
            f"{1e3 * statistics.median(f.times_a):.2f}", f"{1e3 * statistics.median(f.times_b):.2f}",
            f.target or "", verdict,
        ])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
