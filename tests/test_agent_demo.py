"""The offline demo runs as ``python -m mofa_persist.demo`` from any directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def run_demo(folder: Path, **env: str) -> str:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DATABASE_URL", "SESSION_ID", "MOFA_LLM_PROVIDER", "OPENAI_API_KEY")
    }
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "mofa_persist.demo"],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_demo_restores_history_in_a_second_process(tmp_path: Path) -> None:
    output = run_demo(tmp_path)
    database = tmp_path / "mofa-demo.db"
    assert database.is_file()
    assert str(database) in output
    assert "Restored history (6 messages" in output
    assert "Restored state (version 3)" in output
    assert "[context: system prompt + 6 earlier messages]" in output
    assert "(with its messages and state): gone" in output
    assert "5 calls, 0 failed" in output
    # Two processes took part.
    pids = set(re.findall(r"Process (\d+)", output))
    assert len(pids) == 2, output


def test_demo_continues_a_session_given_by_session_id(tmp_path: Path) -> None:
    first = run_demo(tmp_path)
    session_id = first.rsplit("SESSION_ID=", 1)[1].split()[0]
    second = run_demo(tmp_path, SESSION_ID=session_id)
    assert f"continuing session {session_id}" in second
    # The first run left 8 messages; the second run's three turns make 14 before the restart.
    assert "Restored history (14 messages" in second
