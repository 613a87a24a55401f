"""What the OpenTelemetry hook costs per single append (``python -m bench.otel_overhead``).

Three ways on one store, interleaved in rounds so drift on a shared machine hits them alike:
the hook off (as without ``opentelemetry-api``), the API with no provider set (what an
application that does not configure telemetry pays), and, last
because global providers can be set only once, the SDK recording every span and metric
with no exporter. Memory by default (the cheapest call, so the largest share);
``--url postgres://...`` for a server. Prints medians; nothing is judged.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import mofa_persist
from mofa_persist import telemetry


async def _appends(store: mofa_persist.Store, count: int) -> float:
    """Median seconds of ``count`` single appends to a new session (same size each time)."""
    session = (await store.create_session()).id
    samples = []
    for index in range(count):
        started = time.perf_counter()
        await store.append_message(session, "user", f"m{index}")
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def main_async(url: str, rounds: int, count: int) -> None:
    tracer = telemetry._tracer
    async with await mofa_persist.connect(url) as store:
        await _appends(store, count)  # warm up
        results: dict[str, list[float]] = {"hook off": [], "API, no provider set": []}
        for round_ in range(rounds):
            order = ["hook off", "API, no provider set"]
            for name in order if round_ % 2 else reversed(order):
                telemetry._tracer = None if name == "hook off" else tracer
                results[name].append(await _appends(store, count))
            telemetry._tracer = tracer
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider

        trace.set_tracer_provider(TracerProvider())
        metrics.set_meter_provider(MeterProvider())
        results["SDK, recording"] = [await _appends(store, count) for _ in range(rounds)]
    base = statistics.median(results["hook off"])
    print(f"{url}: single appends, median of {rounds} rounds x {count}")
    print("| telemetry | append (µs) | vs hook off (µs) |")
    print("|---|---:|---:|")
    for name, values in results.items():
        value = statistics.median(values)
        print(f"| {name} | {value * 1e6:,.1f} | {(value - base) * 1e6:+,.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="memory://")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main_async(args.url, args.rounds, args.count))


if __name__ == "__main__":
    main()
