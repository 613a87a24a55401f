"""The second process of tests/test_lifecycle.py: it writes turns, or it runs retention.

    python lifecycle_worker.py

It imports the library, prints ``{"ready": true}``, then reads its job as one JSON line on
stdin, so the tests can start it well before they need it (the import is the slow part).
After a job it says ready again and takes the next one. The database is already migrated by
the test, so the worker connects (to the job's URL) with ``migrate=False``.

- ``{"job": "write", "url": U, "tenant": T, "tag": S, "turns": N, "sessions": [ID, ...]}``:
  N writes spread over the sessions, turns with a state and single messages by turns, one
  line per acknowledged write, then ``{"end": true}``.
- ``{"job": "retain", "url": U, "tenant": T, "now": ISO, "batch_size": N, "policy": {...}}``:
  one retention run in the tenant's view, one line per committed batch, then ``{"done": ...}``.

Every line on stdout is one JSON object, flushed at once, so the test sees each write or
batch as it happens, and a SIGKILL loses nothing that was reported. End of input instead of
a job ends the process quietly; any error ends it with a traceback and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from typing import Any

import mofa_persist
from mofa_persist.lifecycle import RetentionPolicy, apply_retention


def say(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def write(view: mofa_persist.Store, tag: str, turns: int, sessions: list[str]) -> None:
    for index in range(turns):
        session_id = sessions[index % len(sessions)]
        if index % 2:
            message = await view.append_message(session_id, "user", f"{tag}-{index}")
            say({"session": session_id, "messages": [[message.seq, message.content]]})
            continue
        turn = await view.record_turn(
            session_id,
            [
                {"role": "user", "content": f"{tag}-{index}-q"},
                {"role": "assistant", "content": f"{tag}-{index}-a"},
            ],
            state={"by": tag, "turn": index},
        )
        assert turn.state is not None
        say(
            {
                "session": session_id,
                "messages": [[message.seq, message.content] for message in turn.messages],
                "state": [turn.state.version, turn.state.state],
            }
        )
    say({"end": True})


async def retain(view: mofa_persist.Store, now: str, batch_size: int, policy: Any) -> None:
    report = await apply_retention(
        view,
        RetentionPolicy.from_mapping(policy),
        now=datetime.fromisoformat(now),
        batch_size=batch_size,
        on_progress=lambda table, rows: say({"table": table, "rows": rows}),
    )
    say({"done": report.counts})


async def main() -> None:
    while True:
        say({"ready": True})
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        job = json.loads(line)
        async with await mofa_persist.connect(job["url"], migrate=False) as store:
            view = store.scoped(tenant_id=job["tenant"])
            if job["job"] == "write":
                await write(view, job["tag"], job["turns"], job["sessions"])
            else:
                await retain(view, job["now"], job["batch_size"], job["policy"])


if __name__ == "__main__":
    asyncio.run(main())
