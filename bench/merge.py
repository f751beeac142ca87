"""Merge engine throughput: the memory-bandwidth ceiling vs our streaming sharded merge.

K contributors each send a float32 model of N elements (full run: K = 4, N = 25M, 4 x 100 MB).

- ``ceiling``: ``np.matmul(w, S, out=out)`` over a preallocated K x N float32 buffer, the
  fastest way numpy has to read the K models once (BLAS, all cores).
- ``mean_stream``: our sharded streaming mean. The plan gives each of K owners a quarter of the
  model; each owner's :class:`~swarmlearn.merge.stream.RangeMerge` receives its chunks (4 MiB) in
  a seeded random order: within each flow-control window of ``--window`` chunks, the K x window
  (participant, chunk) pairs arrive shuffled. Owners run in a thread pool (one thread per core),
  as they would run on separate machines; ``mean_stream_1thread`` runs them one after another.
  ``mean_stream_fullrandom`` shuffles all of an owner's pairs at once (no window).
- memory: one sequential run under tracemalloc with a freshly allocated output; extra memory =
  traced peak + the largest number of bytes an owner held waiting for their turn (in a real
  node those would be received buffers). Bound: one model + K x chunk.
- ``coordmedian`` and ``geomedian`` over the same data, sharded the same way.

Figures are medians over ``--repeat`` runs. Input bytes per second count the K x N x 4 bytes
read.

    python bench/merge.py [--quick] [--repeat N]

The last line printed is the JSON summary; ``met`` is ``mean_stream / ceiling >= 0.7`` and
extra memory within the bound, and the streamed mean equal bit for bit to the whole-array one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from swarmlearn.merge import (
    CoordMedian,
    GeoMedian,
    Layout,
    Mean,
    Method,
    ModelState,
    RangeCollector,
    RangeMerge,
    Shard,
    ShardPlan,
    WeightSet,
    drive_geomedian,
    layout_of,
    plan_shards,
)
from swarmlearn.merge.kernels import mean_float
from swarmlearn.merge.stream import aligned_buffer

MiB = 1024 * 1024
TARGET_VS_CEILING = 0.7
CONTRIBUTORS = 4
WEIGHTS = [10.0, 20.0, 30.0, 40.0]
Arrivals = list[list[tuple[int, int]]]


def timed(
    runs: dict[str, Callable[[], object]], repeat: int, rounds: int = 1, warmup_s: float = 0.0
) -> dict[str, float]:
    """Median seconds per call of each run.

    ``rounds`` times, each run gets a block: calls for ``warmup_s`` seconds (untimed: lets the
    previous block's BLAS threads stop spinning and the caches settle), then ``repeat`` timed
    calls back to back. Alternating blocks spreads changes in machine load over every run.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            deadline = time.perf_counter() + warmup_s
            while time.perf_counter() < deadline:
                run()
            for _ in range(repeat):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def arrivals(plan: ShardPlan, contributors: int, window: int, seed: int) -> Arrivals:
    """Per owner: (participant, chunk) pairs, shuffled within windows of ``window`` chunks."""
    rng = np.random.default_rng(seed)
    orders = []
    for shard in plan.shards:
        chunks = list(shard.chunks(plan.layout))
        order: list[tuple[int, int]] = []
        for start in range(0, len(chunks), window):
            pairs = [(p, c) for c in chunks[start : start + window] for p in range(contributors)]
            order += [pairs[i] for i in rng.permutation(len(pairs))]
        orders.append(order)
    return orders


def stream_mean(
    layout: Layout,
    shard: Shard,
    views: Sequence[memoryview],
    order: Sequence[tuple[int, int]],
    weights: WeightSet,
    method: Method,
    out: memoryview,
) -> int:
    """Feed one owner's chunks to a RangeMerge; return the most bytes it held at once."""
    merge = RangeMerge(layout, shard, weights, method, out)
    for participant, chunk in order:
        start, stop = layout.chunk_span(chunk)
        merge.add(participant, chunk, views[participant][start:stop])
    assert merge.done
    return merge.held_bytes_max


def run_owners(
    plan: ShardPlan,
    views: Sequence[memoryview],
    orders: Arrivals,
    weights: WeightSet,
    method: Method,
    out: memoryview,
    map_fn: Callable[..., Iterable[Any]],
) -> list[int]:
    def owner(index: int) -> int:
        shard = plan.shards[index]
        target = out[shard.start_byte : shard.stop_byte]
        return stream_mean(plan.layout, shard, views, orders[index], weights, method, target)

    return list(map_fn(owner, range(len(plan.shards))))


def run_geomedian(
    plan: ShardPlan,
    views: Sequence[memoryview],
    orders: Arrivals,
    weights: WeightSet,
    method: GeoMedian,
    out: memoryview,
    map_fn: Callable[..., Iterable[Any]],
) -> tuple[int, str]:
    layout = plan.layout
    collectors = [RangeCollector(layout, shard, weights) for shard in plan.shards]
    for collector, order in zip(collectors, orders, strict=True):
        for participant, chunk in order:
            start, stop = layout.chunk_span(chunk)
            collector.add(participant, chunk, views[participant][start:stop])
    stacks = [collector.stack() for collector in collectors]
    driver = drive_geomedian(stacks, method, map_fn)
    outs = [out[s.start_byte : s.stop_byte] for s in plan.shards]
    list(map_fn(lambda stack, target: stack.write(method, target), stacks, outs))
    return driver.iterations, driver.stop_reason.value if driver.stop_reason else "?"


def measure_memory(
    plan: ShardPlan, views: Sequence[memoryview], orders: Arrivals, weights: WeightSet
) -> tuple[int, int]:
    """(traced peak bytes, most bytes an owner held) for one sequential run, fresh output."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out = aligned_buffer(plan.layout.total_bytes, 0)
    held = run_owners(plan, views, orders, weights, Mean(), out, map)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak, max(held)


def make_data(
    contributors: int, elements: int, chunk_bytes: int, seed: int
) -> tuple[NDArray[np.float32], Layout]:
    rng = np.random.default_rng(seed)
    stacked = np.empty((contributors, elements), np.float32)
    for row in stacked:
        rng.standard_normal(elements, dtype=np.float32, out=row)
    layout = layout_of(ModelState({"w": stacked[0]}), chunk_bytes=chunk_bytes)
    return stacked, layout


@dataclass
class Setup:
    """The data and plan every measurement shares."""

    stacked: NDArray[np.float32]
    layout: Layout
    weights: WeightSet
    plan: ShardPlan
    views: list[memoryview]
    windowed: Arrivals
    full_random: Arrivals
    out: memoryview

    @classmethod
    def make(cls, elements: int, chunk_bytes: int, window: int, seed: int) -> Setup:
        stacked, layout = make_data(CONTRIBUTORS, elements, chunk_bytes, seed)
        plan = plan_shards(layout, CONTRIBUTORS)
        return cls(
            stacked,
            layout,
            WeightSet.of(WEIGHTS, CONTRIBUTORS),
            plan,
            [memoryview(row).cast("B") for row in stacked],
            arrivals(plan, CONTRIBUTORS, window, seed),
            arrivals(plan, CONTRIBUTORS, 1 << 30, seed),
            aligned_buffer(layout.total_bytes, 0),
        )

    def gbps(self, seconds: float) -> float:
        return round(self.stacked.nbytes / seconds / 1e9, 2)

    def mean(self, order: Arrivals, map_fn: Callable[..., Iterable[Any]]) -> list[int]:
        return run_owners(self.plan, self.views, order, self.weights, Mean(), self.out, map_fn)


def fast_figures(setup: Setup, par: Callable[..., Iterable[Any]], repeat: int) -> dict[str, Any]:
    """The ceiling and the streaming mean (threads, one thread, no flow-control window)."""
    factors = np.array(WEIGHTS, np.float32) / sum(WEIGHTS)
    ceiling_out = np.empty(setup.stacked.shape[1], np.float32)
    fast = timed(
        {
            "ceiling_matmul": lambda: np.matmul(factors, setup.stacked, out=ceiling_out),
            "mean_stream": lambda: setup.mean(setup.windowed, par),
            "mean_stream_1thread": lambda: setup.mean(setup.windowed, map),
            "mean_stream_fullrandom": lambda: setup.mean(setup.full_random, par),
        },
        repeat,
        rounds=3,
        warmup_s=0.3,
    )
    figures: dict[str, Any] = {f"{name}_GBps": setup.gbps(s) for name, s in fast.items()}
    figures["mean_vs_ceiling"] = round(fast["ceiling_matmul"] / fast["mean_stream"], 3)
    ratio = fast["ceiling_matmul"] / fast["mean_stream_1thread"]
    figures["mean_1thread_vs_ceiling"] = round(ratio, 3)
    setup.mean(setup.windowed, par)
    reference = np.empty(setup.stacked.shape[1], np.float32)
    mean_float(list(setup.stacked), "float32", setup.weights, reference)
    figures["mean_bit_identical"] = bytes(setup.out) == reference.tobytes()
    return figures


def slow_figures(setup: Setup, par: Callable[..., Iterable[Any]], repeat: int) -> dict[str, Any]:
    """Coordinate median and geometric median over the same sharded plan."""
    geo = GeoMedian()
    iterations: list[tuple[int, str]] = []
    args = (setup.plan, setup.views, setup.windowed, setup.weights)
    slow = timed(
        {
            "coordmedian": lambda: run_owners(*args, CoordMedian(), setup.out, par),
            "geomedian": lambda: iterations.append(run_geomedian(*args, geo, setup.out, par)),
        },
        repeat,
    )
    count, reason = iterations[-1]
    return {
        "coordmedian_s": round(slow["coordmedian"], 3),
        "coordmedian_GBps": setup.gbps(slow["coordmedian"]),
        "geomedian_s": round(slow["geomedian"], 3),
        "geomedian_iterations": count,
        "geomedian_stop": reason,
        "geomedian_GBps_per_iteration": setup.gbps(slow["geomedian"] / (count + 1)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under 30 s)")
    parser.add_argument("--repeat", type=int, default=0, help="runs per figure (median)")
    parser.add_argument("--window", type=int, default=1, help="flow-control window, chunks")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chunk-mib", type=int, default=4, help="chunk size, MiB")
    args = parser.parse_args()
    elements = 8_000_000 if args.quick else 25_000_000
    setup = Setup.make(elements, args.chunk_mib * MiB, args.window, args.seed)
    threads = os.cpu_count() or 1
    figures: dict[str, Any] = {"contributors": CONTRIBUTORS, "elements": elements}
    figures |= {"model_bytes": setup.layout.total_bytes, "chunk_bytes": setup.layout.chunk_bytes}
    figures["threads"] = threads
    with ThreadPoolExecutor(threads) as pool:
        figures |= fast_figures(setup, pool.map, args.repeat or (3 if args.quick else 5))
        figures |= slow_figures(setup, pool.map, 1 if args.quick else 3)
    factors = np.array(WEIGHTS, np.float32)
    naive = lambda: np.average(np.stack(list(setup.stacked)), axis=0, weights=factors)  # noqa: E731
    figures["naive_average_GBps"] = setup.gbps(timed({"naive": naive}, 1)["naive"])
    traced, held = measure_memory(setup.plan, setup.views, setup.windowed, setup.weights)
    figures["mean_extra_bytes_peak"] = traced + held
    figures["mean_traced_bytes_peak"] = traced
    figures["mean_held_bytes_peak"] = held
    bound = setup.layout.total_bytes + CONTRIBUTORS * setup.layout.chunk_bytes
    targets = {
        "mean_vs_ceiling": f">= {TARGET_VS_CEILING}",
        "mean_extra_bytes_peak": f"<= {bound} (one model + {CONTRIBUTORS} x chunk)",
        "mean_bit_identical": "true",
    }
    met = (
        figures["mean_vs_ceiling"] >= TARGET_VS_CEILING
        and figures["mean_extra_bytes_peak"] <= bound
        and figures["mean_bit_identical"]
    )
    for key, value in figures.items():
        print(f"{key:32} {value}")
    print(json.dumps({"figures": figures, "targets": targets, "met": bool(met)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
