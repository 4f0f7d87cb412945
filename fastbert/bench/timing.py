"""Side-by-side timing: warm-up, interleaved repeats, medians. Used by benchmarks/ and `fastbert bench`."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class Timing:
    median: float  # seconds
    low: float  # 10th percentile
    high: float  # 90th percentile
    samples: list  # every timed repeat, seconds, in run order

    def spread(self) -> float:
        """(p90 - p10) / median: how noisy the measurement was."""
        return (self.high - self.low) / self.median if self.median > 0 else 0.0


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


def compare(
    fns: dict[str, Callable[[], object]],
    repeats: int = 15,
    warmup: int = 2,
    seed: int = 0,
    sync: Callable[[], None] | None = None,
) -> dict[str, Timing]:
    """Time each callable `repeats` times, interleaved in a shuffled order each round, after `warmup` rounds.

    Interleaving spreads any drift of the machine (frequency, other load) over every entry alike, so the
    ratios of the medians are fair even when the absolute times wander.
    """
    names = list(fns)
    order = random.Random(seed)
    samples = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        order.shuffle(names)
        for name in names:
            if sync:
                sync()
            start = time.perf_counter()
            fns[name]()
            if sync:
                sync()
            if round_ >= warmup:
                samples[name].append(time.perf_counter() - start)
    out = {}
    for name, values in samples.items():
        ordered = sorted(values)
        out[name] = Timing(statistics.median(ordered), _quantile(ordered, 0.1), _quantile(ordered, 0.9), values)
    return out
