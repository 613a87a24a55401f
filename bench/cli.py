"""``python -m bench``: run the workloads on each backend and report ratios to the floor.

Exit status: 0 when every workload ran and W5 found nothing lost, duplicated or reordered;
1 otherwise. Timing never fails a run. A server that cannot be reached is skipped with a loud
line, except under ``CI=true``, where it fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import BACKENDS, IN_CI, RESULTS_DIR, Sizes
from .report import finished, machine, table_lines, write_outputs
from .servers import Unreachable, provision
from .workloads import WORKLOADS

if TYPE_CHECKING:
    from .impls.base import Impl
    from .measure import Check, Measurement
    from .servers import Target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size (1.0)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI mode: prove every workload runs; outputs go to a temporary folder",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated subset of {','.join(BACKENDS)}",
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated subset of W1..W6"
    )
    parser.add_argument("--out", type=Path, default=None, help=f"output folder ({RESULTS_DIR})")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    args.workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    if set(args.workloads) - set(WORKLOADS):
        parser.error(
            f"unknown workloads: {', '.join(sorted(set(args.workloads) - set(WORKLOADS)))}"
        )
    if args.scale <= 0:
        parser.error("--scale must be positive")
    return args


def make_impls(target: Target) -> list[Impl]:
    from .impls.core import CoreImpl
    from .impls.library import LibraryImpl

    floor: Impl
    minimal: Impl
    if target.backend == "postgresql":
        from .impls.floor_pg import PostgresFloor
        from .impls.minimal_pg import PostgresMinimal

        floor, minimal = PostgresFloor(target), PostgresMinimal(target)
    elif target.backend == "mysql":
        from .impls.floor_mysql import MySqlFloor
        from .impls.minimal_mysql import MySqlMinimal

        floor, minimal = MySqlFloor(target), MySqlMinimal(target)
    else:
        from .impls.floor_sqlite import SqliteFloor
        from .impls.minimal_sqlite import SqliteMinimal

        floor, minimal = SqliteFloor(target), SqliteMinimal(target)
    # Opened in reverse: the library first, as connecting runs the migrations on the fresh
    # database.
    return [floor, minimal, CoreImpl(target), LibraryImpl(target)]


async def server_version(impl: Impl) -> str:
    from .impls.library import LibraryImpl

    assert isinstance(impl, LibraryImpl)
    query = {"postgresql": "SHOW server_version", "mysql": "SELECT VERSION()"}.get(
        impl.target.backend, "SELECT sqlite_version()"
    )
    async with impl.store.engine.connect() as conn:
        return str((await conn.exec_driver_sql(query)).scalar())


async def run_backend(
    backend: str, workloads: list[str], sizes: Sizes, state: dict[str, Any]
) -> None:
    measurements: list[Measurement] = state["measurements"]
    checks: list[Check] = state["checks"]
    errors: list[dict[str, str]] = state["errors"]
    async with provision(backend) as target:
        impls = make_impls(target)
        opened: list[Impl] = []
        try:
            for impl in reversed(impls):
                await impl.open()
                opened.append(impl)
            state["servers"][backend] = await server_version(impls[-1])
            for name in [w for w in WORKLOADS if w in workloads]:
                started = time.perf_counter()
                try:
                    found, verdicts = await WORKLOADS[name](backend, impls, sizes)
                except Exception as error:
                    traceback.print_exc()
                    errors.append({"backend": backend, "workload": name, "error": repr(error)})
                    print(f"  {backend} {name}: ERROR {error!r}", flush=True)
                    continue
                measurements.extend(found)
                checks.extend(verdicts)
                bad = [c for c in verdicts if not c.ok]
                summary = ", ".join(
                    f"{m.impl} {m.value:,.1f} {m.unit}" + (f" [{m.case}]" if m.case else "")
                    for m in found
                    if m.impl == "library"
                )
                print(
                    f"  {backend} {name} ({time.perf_counter() - started:.1f}s): {summary}"
                    + (f"  CHECKS FAILED: {bad}" if bad else ""),
                    flush=True,
                )
        finally:
            for impl in opened:
                try:
                    await impl.close()
                except Exception as error:  # closing must not hide the results
                    print(f"  {backend}: closing {impl.name} failed: {error!r}")


async def run(args: argparse.Namespace) -> int:
    sizes = Sizes.for_scale(args.scale)
    state: dict[str, Any] = {"measurements": [], "checks": [], "errors": [], "servers": {}}
    started = time.perf_counter()
    for backend in args.backends:
        print(f"== {backend}", flush=True)
        try:
            await run_backend(backend, args.workloads, sizes, state)
        except Unreachable as error:
            if IN_CI:
                print(f"*** CI=true and {error}: FAILING ***", flush=True)
                state["errors"].append({"backend": backend, "workload": "-", "error": str(error)})
            else:
                print(f"\n*** SKIPPING {backend.upper()}: {error} ***\n", flush=True)
        except Exception as error:
            traceback.print_exc()
            state["errors"].append({"backend": backend, "workload": "setup", "error": repr(error)})
    wall = time.perf_counter() - started
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="mofa_bench_smoke_")) if args.smoke else RESULTS_DIR
    )
    meta = {
        "finished": finished(),
        "scale": args.scale,
        "smoke": args.smoke,
        "backends": args.backends,
        "wall_seconds": round(wall, 1),
        "machine": machine(),
        "servers": state["servers"],
        "sizes": vars(sizes),
    }
    rows = write_outputs(
        out,
        meta=meta,
        measurements=state["measurements"],
        checks=state["checks"],
        errors=state["errors"],
    )
    from .report import growth_checks

    print()
    print("\n".join(table_lines(rows, growth_checks(rows), markdown=False)))
    failed = [c for c in state["checks"] if not c.ok]
    print(
        f"\nW5 checks: {len(state['checks']) - len(failed)}/{len(state['checks'])} clean; "
        f"errors: {len(state['errors'])}; wall {wall:.1f}s; results in {out}"
    )
    for check in failed:
        print(f"W5 FAILED on {check.backend} ({check.impl}, {check.workload}): {check.detail}")
    for error in state["errors"]:
        print(f"ERROR on {error['backend']} {error['workload']}: {error['error']}")
    return 1 if failed or state["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
