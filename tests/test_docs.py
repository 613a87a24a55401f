"""Every code block of the README and docs/ runs as written (a docs page that does not run is
a bug): Python blocks execute, TOML policies parse, the export-format example imports, and
each ``mofa-persist`` / ``alembic`` / ``python -m mofa_persist.demo`` line of a shell block
runs and exits 0.

Only what cannot run inside a test is left out, block by block, with the reason shown as a
skip: creating virtual environments and running nox or the benchmarks (what CI itself does),
and cluster URLs (``nox -s scaleout`` covers them). Server URLs in the examples
(``postgres://…``, ``mysql://…``) are pointed at SQLite files in a scratch folder, so the
blocks run once, in the SQLite session, without touching any server; an agent block gets the
ids and the offline provider its text says it needs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import selected_backends

from mofa_persist.lifecycle import RetentionPolicy

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w+)\s*$")
SERVER_URL = re.compile(r"(postgres(?:ql)?|mysql|mariadb)://[^\s\"'`)]+")
#: Shell commands that are what CI does (or take minutes): shown, not run here.
NOT_RUN = {
    "python3": "creates a virtual environment and installs (CI's own first step)",
    "nox": "runs the whole test matrix (this test is part of it)",
    "python -m bench": "the benchmarks take minutes (nox -s bench_smoke runs them small)",
    "pip install": "installs packages (nox -s integrations installs the extras)",
}
#: Pages about an integration need its framework: nox -s integrations runs them.
FRAMEWORKS = {"openai-agents.md": "agents", "langgraph.md": "langgraph", "adk.md": "google.adk"}

pytestmark = pytest.mark.skipif(
    "sqlite" not in selected_backends(), reason="the docs run once, in the SQLite session"
)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        index = 0
        while index < len(lines):
            match = FENCE.match(lines[index])
            if match is None:
                index += 1
                continue
            end = index + 1
            while not lines[end].startswith("```"):
                end += 1
            code = "\n".join(lines[index + 1 : end]) + "\n"
            found.append(Block(page, index + 1, match.group(1), code))
            index = end + 1
    return found


BLOCKS = blocks()


def local_urls(text: str, folder: Path, names: dict[str, str] | None = None) -> str:
    """Server URLs -> SQLite files in ``folder`` (one per distinct URL, the same file for
    the same URL across the ``names`` given); absolute SQLite paths -> inside ``folder``."""
    names = {} if names is None else names

    def swap(match: re.Match[str]) -> str:
        url = match.group(0)
        if "," in url.split("@")[-1].split("/")[0]:
            pytest.skip(f"{url}: a cluster URL (nox -s scaleout runs clusters)")
        names.setdefault(url, f"sqlite://{folder / f'server{len(names)}.db'}")
        return names[url]

    text = re.sub(r"sqlite:///", f"sqlite://{folder}/", text)
    return SERVER_URL.sub(swap, text)


def run(args: list[str], folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=folder, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def scratch(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    env = {
        **os.environ,
        "DATABASE_URL": "",
        "MOFA_LLM_PROVIDER": "echo",
        "PYTHONPATH": str(REPO),  # alembic's env.py imports mofa_persist from the checkout
    }
    return tmp_path, env


# ---------------------------------------------------------------------- python

PRELUDE = """
import asyncio, uuid
import mofa_persist
user_id, tenant_id, agent_id, session_id = (uuid.uuid4() for _ in range(4))
"""
AGENT_PRELUDE = """
from mofa_persist import EchoProvider, LLMAgentBuilder, MemoryStore, PersistencePlugin
from mofa_persist.agent import Completion


class _Client:  # what docs/agents.md calls my_client: any async text generator
    async def generate(self, messages, *, model):
        return "generated"

    async def close(self):
        pass


my_client = _Client()
_store = await MemoryStore.connect()
agent = await (
    LLMAgentBuilder()
    .with_persistence_plugin(PersistencePlugin("p", _store, user_id, tenant_id, agent_id))
    .with_provider(EchoProvider())
    .build_async()
)
await agent.chat("hello")
await agent.chat("and again")
"""
RUNNER = """
import ast, asyncio, sys
source = sys.stdin.read()
code = compile(source, sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.language == "python"], ids=lambda block: block.name
)
def test_python_blocks_run(block: Block, scratch: tuple[Path, dict[str, str]]) -> None:
    folder, env = scratch
    if block.page.name in FRAMEWORKS and block.page.parent.name == "integrations":
        pytest.importorskip(FRAMEWORKS[block.page.name], reason="nox -s integrations runs it")
    write_policies(block, folder)
    code = local_urls(block.code, folder)
    prelude = PRELUDE
    if "agent." in code and "build_async" not in code:
        prelude += AGENT_PRELUDE  # a block about an agent that exists already
    elif "my_client" in code:
        prelude += AGENT_PRELUDE
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, block.name],
        input=prelude + code,
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{block.name} failed:\n{done.stderr[-3000:]}"


# ---------------------------------------------------------------------- toml and json


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.language == "toml"], ids=lambda block: block.name
)
def test_toml_blocks_parse(block: Block) -> None:
    data = tomllib.loads(block.code)
    if "retention" in data:
        assert not RetentionPolicy.from_mapping(data).empty


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.language == "json"], ids=lambda block: block.name
)
def test_the_export_example_imports(block: Block, scratch: tuple[Path, dict[str, str]]) -> None:
    folder, env = scratch
    example = folder / "example.jsonl"
    example.write_text(block.code, encoding="utf-8")
    url = f"sqlite://{folder / 'imported.db'}"
    cli = [sys.executable, "-m", "mofa_persist.cli"]
    assert run([*cli, "upgrade", "--url", url], folder, env).returncode == 0
    done = run([*cli, "import", str(example), "--url", url, "--json"], folder, env)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------- shell


UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def seed(folder: Path, env: dict[str, str], urls: set[str], text: str, session: str) -> None:
    """Each database a block reads exists, with the tenant, user and session ids it shows:
    ids after ``--tenant``/``--user`` own the sessions, every other id is a session."""
    tenants = re.findall(rf"--tenant ({UUID})", text) or [str(uuid.uuid4())]
    users = re.findall(rf"--user ({UUID})", text) or [str(uuid.uuid4())]
    sessions = set(re.findall(UUID, text)) - set(tenants) - set(users) | {session}
    script = (
        "import asyncio, contextlib, sys, mofa_persist\n"
        "async def main():\n"
        "    tenant, user, *sessions = sys.argv[1].split(',')\n"
        "    for url in sys.argv[2:]:\n"
        "        async with await mofa_persist.connect(url) as store:\n"
        "            for sid in sessions:\n"
        "                with contextlib.suppress(mofa_persist.ConflictError):\n"
        "                    await store.create_session(\n"
        "                        session_id=sid, tenant_id=tenant, user_id=user)\n"
        "                    await store.append_message(sid, 'user', 'hello')\n"
        "asyncio.run(main())\n"
    )
    ids = ",".join([tenants[0], users[0], *sorted(sessions)])
    done = run([sys.executable, "-c", script, ids, *sorted(urls)], folder, env)
    assert done.returncode == 0, done.stderr


def write_policies(block: Block, folder: Path) -> None:
    """The page's TOML policy example, under the file name its commands use."""
    for other in BLOCKS:
        if other.page == block.page and other.language == "toml":
            for name in ("retention.toml", "policy.toml"):
                (folder / name).write_text(other.code, encoding="utf-8")


def shell_lines(block: Block) -> list[str]:
    lines = []
    for raw in block.code.splitlines():
        line = raw.split(" # ")[0].split("  #")[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


@pytest.mark.parametrize(
    "block",
    [b for b in BLOCKS if b.language in ("bash", "sh", "console")],
    ids=lambda block: block.name,
)
def test_shell_blocks_run(block: Block, scratch: tuple[Path, dict[str, str]]) -> None:
    folder, env = scratch
    names: dict[str, str] = {}
    lines = [local_urls(line, folder, names) for line in shell_lines(block)]
    runnable = [line for line in lines if not any(line.startswith(k) for k in NOT_RUN)]
    if not runnable:
        reasons = {NOT_RUN[k] for line in lines for k in NOT_RUN if line.startswith(k)}
        pytest.skip(f"{block.name}: not run here: {'; '.join(sorted(reasons))}")
    session = str(uuid.uuid4())
    # The databases read: the default one, and each copy's source (its target starts empty).
    seed(folder, env, {f"sqlite://{folder / 'mofa.db'}"}, " ".join(runnable), session)
    for source in re.findall(r"copy sqlite://(\S+)", " ".join(runnable)):
        # A copy's source holds the same data as the default database (its target starts
        # empty, or holds the same sessions: a resumed copy skips them).
        shutil.copy(folder / "mofa.db", folder / source)
    write_policies(block, folder)
    for line in runnable:
        line = line.replace("<session-id>", session).replace("<uuid>", session)
        line, _, redirect = line.partition(" > ")
        words = shlex.split(line)
        variables = {}
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            variables[name] = value
        if words[0] == "mofa-persist":
            args = [sys.executable, "-m", "mofa_persist.cli", *words[1:]]
        elif words[0] == "alembic":
            args = [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), *words[1:]]
        elif words[:2] in (["python", "-m"], [".venv/bin/python", "-m"]):
            args = [sys.executable, *words[1:]]
        else:
            pytest.fail(f"{block.name}: no rule to run {line!r}; teach tests/test_docs.py")
        done = run(args, folder, {**env, **variables})
        assert done.returncode == 0, f"{block.name}: {line}\n{done.stderr[-2000:]}"
        if redirect:
            (folder / redirect.strip()).write_text(done.stdout, encoding="utf-8")
