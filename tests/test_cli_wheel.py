"""The ``mofa-persist`` command as a new user gets it: a wheel built from this checkout,
installed with ``pip install <wheel>[all]`` into a fresh virtual environment, run as a real
subprocess from a folder outside the repository. This proves the packaged migrations ship."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
import venv
from pathlib import Path
from typing import Any

import pytest
from conftest import build_wheel, create_database, drop_database, selected_backends

REPO = Path(__file__).resolve().parent.parent
SERVERS = [name for name in selected_backends() if name in ("postgresql", "mysql")]

pytestmark = [pytest.mark.slow, pytest.mark.migrations]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``mofa-persist`` script of a fresh venv holding only the wheel and its deps."""
    root = tmp_path_factory.mktemp("wheel")
    wheels = root / "wheels"
    wheel = build_wheel(wheels)
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[all]"],
        check=True,
        timeout=600,
        capture_output=True,
    )
    return env_dir / "bin" / "mofa-persist"


def cli(script: Path, cwd: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH")}
    done = subprocess.run(
        [str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == code, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def cli_json(script: Path, cwd: Path, *args: str) -> Any:
    return json.loads(cli(script, cwd, *args, "--json").stdout)


def test_every_command_from_an_installed_wheel(installed: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert not str(outside).startswith(str(REPO))
    # The default URL is sqlite://mofa.db in the working directory.
    # The wheel carries every migration of the checkout, newest first in `history`.
    revisions = sorted(path.name[9:13] for path in (REPO / "migrations" / "versions").glob("*.py"))
    assert cli_json(installed, outside, "upgrade")["to"] == revisions[-1]
    assert (outside / "mofa.db").is_file()
    assert cli_json(installed, outside, "current")["up_to_date"] is True
    history = cli_json(installed, outside, "history")
    assert [row["revision"] for row in history] == revisions[::-1]

    demo = cli(installed, outside, "demo", "--url", "sqlite://demo.db")
    assert "mofa_persist" not in demo.stderr  # no traceback
    sessions = cli_json(installed, outside, "sessions", "--url", "sqlite://demo.db")["sessions"]
    assert sessions
    session_id = sessions[0]["id"]
    shown = cli(installed, outside, "show", session_id, "--last", "2", "--url", "sqlite://demo.db")
    assert "assistant" in shown.stdout
    assert cli_json(installed, outside, "stats", "--url", "sqlite://demo.db")["totals"]["messages"]

    cli(installed, outside, "export", "--all", "--out", "backup.jsonl", "--url", "sqlite://demo.db")
    imported = cli_json(installed, outside, "import", "backup.jsonl")
    assert imported["inserted"]["sessions"] == len(sessions)
    again = cli_json(installed, outside, "import", "backup.jsonl")
    assert again["inserted"]["messages"] == 0
    copied = cli_json(installed, outside, "copy", "sqlite://demo.db", "sqlite://copy.db")
    assert copied["ok"]
    assert copied["verified"] == len(sessions)
    pruned = cli_json(installed, outside, "prune", "--older-than", "1d", "--dry-run")
    assert pruned["sessions"] == 0

    error = cli(installed, outside, "show", str(uuid.uuid4()), code=1)
    assert error.stderr.startswith("error: session ")
    assert len(error.stderr.strip().splitlines()) == 1
    bad = outside / "bad.jsonl"
    bad.write_text("not json\n")
    error = cli(installed, outside, "import", "bad.jsonl", code=1)
    assert (
        error.stderr.strip()
        == "error: line 1: not a mofa-persist export (the first line must be its header)"
    )
    error = cli(installed, outside, "sessions", "--url", "postgres://x@127.0.0.1:1/none", code=1)
    assert error.stderr.startswith("error: cannot reach the postgresql database")
    assert "Traceback" not in error.stderr


@pytest.mark.parametrize("server", SERVERS)
def test_installed_wheel_migrates_and_copies_to_a_server(
    installed: Path, tmp_path: Path, server: str
) -> None:
    url = create_database(server)
    try:
        cli(installed, tmp_path, "upgrade", "--url", url)
        assert cli_json(installed, tmp_path, "current", "--url", url)["up_to_date"]
        cli(installed, tmp_path, "demo", "--url", "sqlite://demo.db")
        copied = cli_json(installed, tmp_path, "copy", "sqlite://demo.db", url)
        assert copied["ok"]
        assert copied["copied"] == copied["verified"] > 0
        back = cli_json(installed, tmp_path, "copy", url, "sqlite://back.db")
        assert back["ok"]
        cli(installed, tmp_path, "downgrade", "base", "--yes", "--url", url)
        assert cli_json(installed, tmp_path, "current", "--url", url)["current"] is None
    finally:
        drop_database(server, url)
