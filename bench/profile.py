"""Profile one library operation with pyinstrument: ``python -m bench.profile --help``.

Prints the call tree of N repetitions (library path only) so the hot spots behind a ratio can
be read off; ``--html FILE`` also writes pyinstrument's interactive report.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path

from pyinstrument import Profiler

from .impls.base import CONTENT
from .impls.library import LibraryImpl
from .servers import provision

OPS = ("append", "turn", "newest", "list", "import", "export")


async def _profile(backend: str, op: str, count: int) -> Profiler:
    async with provision(backend) as target:
        impl = LibraryImpl(target)
        await impl.open()
        try:
            user = uuid.uuid4()
            sid = await impl.create_session(user)
            if op in ("newest", "export"):
                await impl.seed_messages(sid, 10_000)
            if op == "list":
                await impl.seed_sessions([user] * 100 + [uuid.uuid4() for _ in range(10_000)])
            batch = [("user", CONTENT)] * 1_000
            for _ in range(20):  # warm-up
                await impl.append(sid, "user", CONTENT) if op == "append" else None
            profiler = Profiler(async_mode="enabled", interval=0.0002)
            profiler.start()
            for _ in range(count):
                if op == "append":
                    await impl.append(sid, "user", CONTENT)
                elif op == "turn":
                    await impl.turn(sid, CONTENT, CONTENT)
                elif op == "newest":
                    await impl.newest(sid, 50)
                elif op == "list":
                    await impl.list_sessions(user, 50)
                elif op == "import":
                    await impl.append_batch(sid, batch)
                else:
                    async for _row in impl.export(sid, 1_000):
                        pass
            profiler.stop()
        finally:
            await impl.close()
    return profiler


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--backend", default="postgresql")
    parser.add_argument("--op", choices=OPS, default="append")
    parser.add_argument("-n", "--count", type=int, default=500)
    parser.add_argument("--html", type=Path, default=None)
    args = parser.parse_args()
    profiler = asyncio.run(_profile(args.backend, args.op, args.count))
    print(profiler.output_text(unicode=True, color=False, show_all=False))
    if args.html is not None:
        args.html.write_text(profiler.output_html())


if __name__ == "__main__":
    main()
