"""Search benchmark: ``python -m bench.search_bench --messages 100000,1000000``.

Per backend and size, on fresh databases (see :mod:`bench.servers`):

- load: synthetic messages (12 words of a Zipf-like vocabulary of 3,000 and an order number
  each), 100 per session, written by executemany at revision 0007 (no search index), then
  ``upgrade head``: migration 0008 builds the index over the loaded rows, as it would on a
  store in use. Both times are printed;
- search latency: p50/p95 of ``search_messages(..., limit=20)`` (first page) for rare and
  common words, phrases and prefixes and a short word (MySQL's exact-scan fallback);
- write overhead of the index, once per backend at the first size: ``--appends`` single
  ``append_message`` calls (the W1 workload) on a database at revision 0007 and at head,
  alternated over ``--rounds``; the best round of each is compared, by wall clock and by
  process CPU time (SQLite and memory do their index work in this process, so their CPU
  time measures it without the other jobs of a loaded machine).

It prints a Markdown table (p50 / p95 per size, and the p50 growth from the first size to the
last); it is a benchmark, not a test (no pass/fail).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import mofa_persist
from mofa_persist.engine import create_engine
from mofa_persist.migrate import upgrade
from mofa_persist.repository.tables import m_t, s_t
from mofa_persist.searching import parse_query
from mofa_persist.urls import parse_url

from .config import BACKENDS
from .servers import Unreachable, provision

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "ze",
    "pa",
    "qu",
    "de",
    "fi",
    "go",
    "hu",
    "ja",
]
PER_SESSION = 100  # messages per session (100k messages: 1k sessions)
CHUNK = 5000  # rows per executemany while loading


@dataclass
class Corpus:
    """Deterministic synthetic text, and terms whose frequency is known."""

    seed: int
    vocabulary: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        seen: set[str] = set()
        while len(self.vocabulary) < 3000:
            word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
            if word not in seen:
                seen.add(word)
                self.vocabulary.append(word)
        self.weights = [1.0 / (rank + 1) for rank in range(len(self.vocabulary))]

    def messages(self, count: int) -> list[str]:
        rng = random.Random(self.seed + 1)
        out = []
        for index in range(count):
            words = rng.choices(self.vocabulary, self.weights, k=12)
            extra = " the id" if index % 1000 == 0 else ""
            out.append(f"{' '.join(words)} order {10000 + index}{extra}.")
        return out


def _queries(corpus: Corpus, count: int) -> dict[str, str]:
    vocabulary = corpus.vocabulary
    return {
        "rare: one message": f"order {10000 + count // 2}",
        "rare word": vocabulary[2900],
        "mid word": vocabulary[200],
        "common word": vocabulary[5],
        "commonest word": vocabulary[0],
        "phrase, rare": f'"{vocabulary[40]} {vocabulary[41]}"',
        "phrase, common": f'"{vocabulary[0]} {vocabulary[1]}"',
        "prefix, rare": f"{vocabulary[2900][:5]}*",
        "prefix, common": f"{vocabulary[200][:4]}*",
        "short word (id)": "id",
    }


def _share(query: str, texts: list[str]) -> float:
    """Percent of messages that match ``query`` (on at most 100k of them: the corpus is
    uniform, so the share does not depend on its size)."""
    parsed = parse_query(query)
    sample = texts[:100_000]
    return 100.0 * sum(1 for text in sample if parsed.matches(text)) / len(sample)


async def _bulk(engine: AsyncEngine, texts: list[str]) -> None:
    """Sessions and messages written by executemany at revision 0007 (no search index): a
    stand-in for a store that has been in use, loaded in minutes instead of hours."""
    started = datetime(2026, 1, 1, tzinfo=UTC)
    sessions = []
    for first in range(0, len(texts), PER_SESSION):
        count = min(PER_SESSION, len(texts) - first)
        at = started + timedelta(milliseconds=first)
        sessions.append(
            {
                "id": uuid.uuid4(),
                "title": f"bench {first // PER_SESSION}",
                "metadata": {},
                "last_seq": count,
                "created_at": at,
                "updated_at": at + timedelta(milliseconds=count - 1),
            }
        )
    async with engine.begin() as conn:
        for start in range(0, len(sessions), CHUNK):
            await conn.execute(s_t.insert(), sessions[start : start + CHUNK])
    for start in range(0, len(texts), CHUNK):
        rows = [
            {
                "id": uuid.uuid4(),
                "session_id": sessions[index // PER_SESSION]["id"],
                "seq": index % PER_SESSION + 1,
                "role": "user" if index % 2 == 0 else "assistant",
                "content": texts[index],
                "metadata": {},
                "created_at": started + timedelta(milliseconds=index),
            }
            for index in range(start, min(start + CHUNK, len(texts)))
        ]
        async with engine.begin() as conn:
            await conn.execute(m_t.insert(), rows)


async def _load(url: str, texts: list[str]) -> tuple[float, float, mofa_persist.Store]:
    """A store over ``texts``: bulk-loaded at 0007, then upgraded (migration 0008 builds the
    index over the loaded rows). Returns (load seconds, index build seconds, store)."""
    memory = url.startswith("memory")
    engine: AsyncEngine | None = None
    store: mofa_persist.Store | None = None
    if memory:  # the database lives in the store's connection
        store = await mofa_persist.connect(url, migrate=False)
        target = store.engine
    else:
        engine = create_engine(parse_url(url), use_null_pool=True, enforce_foreign_keys=False)
        target = engine
    try:
        await upgrade(target, "0007")
        began = time.perf_counter()
        await _bulk(target, texts)
        loaded = time.perf_counter()
        await upgrade(target, "head")
        indexed = time.perf_counter()
    finally:
        if engine is not None:
            await engine.dispose()
    if store is None:
        store = await mofa_persist.connect(url)
    return loaded - began, indexed - loaded, store


async def _latency(store: mofa_persist.Store, query: str, repeats: int) -> tuple[float, float, int]:
    """p50 and p95 in ms of the first page, after 2 warm-ups (3 samples when one takes >1 s)."""
    started = time.perf_counter()
    for _ in range(2):
        page = await store.search_messages(query)
    if time.perf_counter() - started > 2.0:
        repeats = min(repeats, 3)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        page = await store.search_messages(query)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))], len(page.items)


async def _appends(url: str, revision: str, count: int) -> tuple[float, float]:
    """Wall-clock and process CPU seconds for ``count`` single appends on a database at
    ``revision`` (the CPU time counts SQLite's work, done in this process, but not other
    jobs on a loaded machine; for a server it counts only the client)."""
    if not url.startswith("memory"):  # memory: the database lives in the store's connection
        engine = create_engine(parse_url(url), use_null_pool=True, enforce_foreign_keys=False)
        try:
            await upgrade(engine, revision)
        finally:
            await engine.dispose()
    async with await mofa_persist.connect(url, migrate=False) as store:
        if url.startswith("memory"):
            await upgrade(store.engine, revision)
        session = await store.create_session()
        started, cpu = time.perf_counter(), time.process_time()
        for index in range(count):
            await store.append_message(session.id, "user", f"message {index} about order 4821")
        return time.perf_counter() - started, time.process_time() - cpu


@dataclass
class Result:
    """One backend at one size."""

    backend: str
    messages: int
    load_s: float = 0.0
    index_s: float = 0.0
    latency: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    overhead: str = ""


async def run_backend(backend: str, size: int, args: argparse.Namespace) -> Result:
    corpus = Corpus(seed=7)
    texts = corpus.messages(size)
    result = Result(backend, size)
    async with provision(backend) as target:
        result.load_s, result.index_s, store = await _load(target.url, texts)
        try:
            for name, query in _queries(corpus, size).items():
                result.latency[name] = await _latency(store, query, args.repeats)
                p50, p95, _ = result.latency[name]
                print(
                    f"  {backend} {size:,}: {name} `{query}` p50 {p50:.1f} ms p95 {p95:.1f} ms",
                    flush=True,
                )
        finally:
            await store.close()
    if args.appends and size == min(int(each) for each in args.messages.split(",")):
        result.overhead = await _overhead(backend, args)
    return result


async def _overhead(backend: str, args: argparse.Namespace) -> str:
    """W1 with and without the index: alternating fresh databases at 0007 and head."""
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for _ in range(args.rounds):
        for revision in ("0007", "head"):
            async with provision(backend) as target:
                seconds, used = await _appends(target.url, revision, args.appends)
            best[revision] = min(best.get(revision, seconds), seconds)
            cpu[revision] = min(cpu.get(revision, used), used)
    overhead = (best["head"] / best["0007"] - 1) * 100
    cpu_overhead = (cpu["head"] / cpu["0007"] - 1) * 100
    per_append = {revision: used / args.appends * 1e6 for revision, used in cpu.items()}
    return (
        f"{args.appends / best['0007']:,.0f} msg/s without the index, "
        f"{args.appends / best['head']:,.0f} with: {overhead:+.1f} % wall clock; "
        f"process CPU {per_append['0007']:,.0f} -> {per_append['head']:,.0f} µs per append: "
        f"{cpu_overhead:+.1f} %"
    )


def _report(results: list[Result], corpus: Corpus, texts: list[str]) -> str:
    sizes = sorted({result.messages for result in results})
    backends = list(dict.fromkeys(result.backend for result in results))
    by = {(result.backend, result.messages): result for result in results}
    head = ["query", "share"]
    for backend in backends:
        head += [f"{backend} {size:,}" for size in sizes]
        if len(sizes) > 1:
            head.append(f"{backend} growth")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, query in _queries(corpus, sizes[0]).items():
        cells = [f"{name}: `{query}`", f"{_share(query, texts):.2g} %"]
        for backend in backends:
            p50s = [by[backend, size].latency[name][0] for size in sizes if (backend, size) in by]
            for size in sizes:
                found = by.get((backend, size))
                p50, p95 = found.latency[name][:2] if found else (0.0, 0.0)
                cells.append(f"{p50:.1f} / {p95:.1f}" if found else "-")
            if len(sizes) > 1:
                cells.append(f"{p50s[-1] / p50s[0]:.2f}x" if len(p50s) == len(sizes) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for result in results:
        lines.append(
            f"- {result.backend} {result.messages:,}: bulk load {result.load_s:.1f} s, "
            f"index build (migration 0008) {result.index_s:.1f} s"
            + (f"; W1 {result.overhead}" if result.overhead else "")
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    sizes = [int(size) for size in args.messages.split(",")]
    results: list[Result] = []
    for backend in args.backends.split(","):
        for size in sizes:
            try:
                results.append(await run_backend(backend.strip(), size, args))
            except Unreachable as error:
                print(f"{backend}: skipped ({error})", flush=True)
                break
    corpus = Corpus(seed=7)
    print("\np50 / p95 in ms, first page of 20 hits\n")
    print(_report(results, corpus, corpus.messages(min(sizes))), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search_bench", description=__doc__)
    parser.add_argument("--messages", default="100000", help="sizes, comma-separated")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--repeats", type=int, default=20, help="timed searches per query")
    parser.add_argument("--appends", type=int, default=1000, help="W1 appends per round (0: skip)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
