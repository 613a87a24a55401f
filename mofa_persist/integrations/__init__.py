"""Drop-in persistence for the agent frameworks people already use, each an optional extra.

- ``mofa_persist.integrations.openai_agents``: ``MofaSession``, a session of the OpenAI Agents
  SDK (``pip install 'mofa-persist[openai-agents]'``).
- ``mofa_persist.integrations.langgraph``: ``MofaSaver``, a LangGraph checkpointer
  (``pip install 'mofa-persist[langgraph]'``).
- ``mofa_persist.integrations.adk``: ``MofaSessionService``, a Google ADK session service
  (``pip install 'mofa-persist[adk]'``).
- ``mofa_persist.integrations.adk_memory``: ``MofaMemoryService``, a Google ADK memory service
  over the search index, so ``load_memory`` searches the user's past sessions (same extra).

A framework's session is an ordinary session of this library (see
:meth:`mofa_persist.Store.session_for`): the CLI, export and copy, retention, erasure and
usage all see it. Importing this package imports no framework.
"""
