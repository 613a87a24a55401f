"""A process killed with SIGKILL in the middle of a turn leaves no half turn behind."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import uuid
from typing import TYPE_CHECKING

import pytest
from agent_support import ScriptedProvider

from mofa_persist.agent import LLMAgentBuilder, PersistencePlugin

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Quirks

    from mofa_persist import Store

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

# The child completes one turn, then blocks inside the provider call of the second one.
CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import mofa_persist
    from mofa_persist.agent import Completion, LLMAgentBuilder, PersistencePlugin

    class BlockOnSecondCall:
        name = "blocking"
        default_model = "blocking-1"
        calls = 0

        async def complete(self, messages, *, model):
            self.calls += 1
            if self.calls == 2:
                print("BLOCKED", flush=True)
                await asyncio.Event().wait()
            return Completion(content=f"reply {self.calls}", model=model)

        async def aclose(self):
            pass

    async def main(url, user, tenant, agent_id, session_id):
        store = await mofa_persist.connect(url)
        plugin = PersistencePlugin("persistence", store, user, tenant, agent_id, session_id)
        agent = await (
            LLMAgentBuilder().with_persistence_plugin(plugin)
            .with_provider(BlockOnSecondCall()).build_async()
        )
        agent.state["step"] = 1
        await agent.chat("first")
        agent.state["step"] = 2
        await agent.chat("second")

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def test_sigkill_mid_turn_leaves_the_last_whole_turn(
    store: Store, database_url: str, quirks: Quirks, tenant: uuid.UUID, tmp_path: Path
) -> None:
    if not quirks.shared_between_processes:
        pytest.skip("this backend's database cannot be shared with another process")
    user, agent_id, session_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        database_url,
        str(user),
        str(tenant),
        str(agent_id),
        str(session_id),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        if line.strip() != b"BLOCKED":
            assert child.stderr is not None
            errors = await child.stderr.read()
            pytest.fail(f"child did not reach the second call: {errors.decode()[-2000:]}")
    finally:
        if child.returncode is None:
            os.kill(child.pid, signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL

    plugin = PersistencePlugin("persistence", store, user, tenant, agent_id, session_id)
    scoped = plugin.store
    messages = await scoped.get_messages(session_id)
    assert [(m.seq, m.role, m.content) for m in messages] == [
        (1, "user", "first"),
        (2, "assistant", "reply 1"),
    ]
    state = await scoped.load_state(session_id)
    assert state is not None
    assert (state.version, state.state) == (1, {"step": 1})
    assert (await scoped.get_session(session_id)).last_seq == 2
    # The killed call never answered, so only the first one was recorded.
    assert (await scoped.usage(session_id=session_id)).by_status == {"success": 1}

    # A new process (here: a new agent) recovers the state and continues without conflict.
    provider = ScriptedProvider()
    agent = await (
        LLMAgentBuilder().with_persistence_plugin(plugin).with_provider(provider).build_async()
    )
    async with agent:
        assert (agent.state, agent.state_version) == ({"step": 1}, 1)
        agent.state["step"] = 2
        await agent.chat("second, again")
        assert [m["content"] for m in provider.requests[0]] == [
            "first",
            "reply 1",
            "second, again",
        ]
    assert await scoped.count_messages(session_id) == 4
