"""Search benchmark: ``python -m bench.search_bench --messages 100000``.

Two measurements per backend, on fresh databases (see :mod:`bench.servers`):

- search latency: ``--messages`` messages over ``messages / 100`` sessions (synthetic text
  with a Zipf-like vocabulary and one order number per message), then p50/p95 of
  ``search_messages(..., limit=20)`` for a rare term, a mid-frequency word, a phrase, a
  prefix, a short word (MySQL's exact-scan fallback) and the commonest word;
- write overhead of the index: ``--appends`` single ``append_message`` calls (the W1
  workload) on a database at revision 0007 (no search index) and at head, alternated over
  ``--rounds``; the best round of each is compared.

It prints a Markdown table; it is a benchmark, not a test (no pass/fail).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field

import mofa_persist
from mofa_persist.engine import create_engine
from mofa_persist.migrate import upgrade
from mofa_persist.urls import parse_url

from .config import BACKENDS
from .servers import Unreachable, provision

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
BATCH = 100  # messages per append_messages call while loading


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
    middle = corpus.vocabulary[200]
    return {
        "rare (order N)": f"order {10000 + count // 2}",
        "mid word": middle,
        "phrase": f'"{corpus.vocabulary[0]} {corpus.vocabulary[1]}"',
        "prefix": f"{middle[:4]}*",
        "short word (id)": "id",
        "commonest word": corpus.vocabulary[0],
    }


async def _load(url: str, texts: list[str]) -> tuple[float, mofa_persist.Store]:
    store = await mofa_persist.connect(url)
    started = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        session = await store.create_session(title=f"bench {start // BATCH}")
        chunk = texts[start : start + BATCH]
        await store.append_messages(
            session.id, [{"role": "user", "content": text} for text in chunk]
        )
    return time.perf_counter() - started, store


async def _latency(store: mofa_persist.Store, query: str, repeats: int) -> tuple[float, float, int]:
    for _ in range(2):
        page = await store.search_messages(query)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        page = await store.search_messages(query)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))], len(page.items)


async def _appends(url: str, revision: str, count: int) -> float:
    """Seconds for ``count`` single appends on a database at ``revision``."""
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
        started = time.perf_counter()
        for index in range(count):
            await store.append_message(session.id, "user", f"message {index} about order 4821")
        return time.perf_counter() - started


async def run_backend(backend: str, args: argparse.Namespace) -> list[str]:
    corpus = Corpus(seed=7)
    texts = corpus.messages(args.messages)
    rows = []
    async with provision(backend) as target:
        load_s, store = await _load(target.url, texts)
        try:
            rows.append(
                f"| {backend} | load {args.messages:,} messages | {load_s:.1f} s "
                f"({args.messages / load_s:,.0f} msg/s) | |"
            )
            for name, query in _queries(corpus, args.messages).items():
                p50, p95, hits = await _latency(store, query, args.repeats)
                rows.append(
                    f"| {backend} | search {name}: `{query}` | p50 {p50:.1f} ms, "
                    f"p95 {p95:.1f} ms | {hits} hits on page 1 |"
                )
        finally:
            await store.close()
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for revision in ("0007", "head"):
            async with provision(backend) as target:
                seconds = await _appends(target.url, revision, args.appends)
            best[revision] = min(best.get(revision, seconds), seconds)
    overhead = (best["head"] / best["0007"] - 1) * 100
    rows.append(
        f"| {backend} | W1 {args.appends:,} x append_message | without index "
        f"{args.appends / best['0007']:,.0f} msg/s, with {args.appends / best['head']:,.0f} "
        f"msg/s | write overhead {overhead:+.1f} % |"
    )
    return rows


async def main_async(args: argparse.Namespace) -> int:
    print("| backend | measure | result | note |\n| --- | --- | --- | --- |", flush=True)
    for backend in args.backends.split(","):
        try:
            rows = await run_backend(backend.strip(), args)
        except Unreachable as error:
            rows = [f"| {backend} | skipped | {error} | |"]
        print("\n".join(rows), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search_bench", description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--repeats", type=int, default=20, help="timed searches per query")
    parser.add_argument("--appends", type=int, default=1000, help="W1 appends per round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
