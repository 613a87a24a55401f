"""The model tables under the short names the repository's queries use, and its defaults."""

from __future__ import annotations

from ..models import (
    agent_state_table,
    api_calls_table,
    external_keys_table,
    idempotency_keys_table,
    messages_table,
    sessions_table,
)

#: Page size of listings when the caller gives none.
DEFAULT_PAGE = 50

s_t = sessions_table
m_t = messages_table
a_t = agent_state_table
c_t = api_calls_table
k_t = idempotency_keys_table
x_t = external_keys_table
