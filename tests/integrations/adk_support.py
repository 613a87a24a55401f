"""Helpers of tests/integrations/test_adk.py: a scripted model for ADK's ``LlmAgent`` and one
conversation turn run through ADK's ``Runner``, usable in-process or as a script
(``python adk_support.py URL TENANT TURN``, which prints what the model was sent as JSON)."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import TYPE_CHECKING, Any, ClassVar

from google.adk.agents import LlmAgent
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.tools.function_tool import FunctionTool
from google.genai import types

import mofa_persist
from mofa_persist.integrations.adk import MofaSessionService

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from google.adk.models.llm_request import LlmRequest
    from google.adk.sessions import BaseSessionService

APP = "forecast app"
USER = "user ✓"
SESSION = "chat 🔁"


class ScriptedLlm(BaseLlm):
    """A model that answers from a script, and records every request it is sent.

    After a function response it says the tool's result; otherwise it calls the weather tool
    the first time and answers in text after that.
    """

    requests: ClassVar[list[list[dict[str, Any]]]] = []

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        contents = [
            content.model_dump(mode="json", exclude_none=True) for content in llm_request.contents
        ]
        ScriptedLlm.requests.append(contents)
        last = llm_request.contents[-1]
        parts = last.parts or []
        response = next((p.function_response for p in parts if p.function_response), None)
        if response is not None:
            text = f"It says: {response.response}"
            yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text=text)]))
            return
        asked = "".join(part.text or "" for part in parts)
        if "weather" in asked.lower():
            call = types.FunctionCall(name="weather", args={"city": "Zürich"}, id="call-1")
            yield LlmResponse(
                content=types.Content(role="model", parts=[types.Part(function_call=call)])
            )
            return
        yield LlmResponse(
            content=types.Content(role="model", parts=[types.Part(text=f"You said: {asked}")])
        )


def weather(city: str) -> str:
    """The weather in a city."""
    return f"{city}: 7°C, rain"


def make_agent() -> LlmAgent:
    return LlmAgent(
        name="forecaster",
        model=ScriptedLlm(model="scripted"),
        instruction="Answer briefly.",
        tools=[FunctionTool(weather)],
    )


async def turn(service: BaseSessionService, text: str) -> list[str]:
    """One user turn through ADK's Runner; the texts of the final responses."""
    runner = Runner(app_name=APP, agent=make_agent(), session_service=service)
    message = types.Content(role="user", parts=[types.Part(text=text)])
    said: list[str] = []
    async for event in runner.run_async(user_id=USER, session_id=SESSION, new_message=message):
        if event.content is not None and event.is_final_response():
            said.extend(part.text for part in event.content.parts or [] if part.text)
    return said


async def main(url: str, tenant: str, text: str) -> None:
    ScriptedLlm.requests.clear()
    async with await mofa_persist.connect(url) as store:
        service = MofaSessionService(store.scoped(tenant_id=uuid.UUID(tenant)))
        if await service.get_session(app_name=APP, user_id=USER, session_id=SESSION) is None:
            await service.create_session(app_name=APP, user_id=USER, session_id=SESSION)
        said = await turn(service, text)
    print(json.dumps({"said": said, "requests": ScriptedLlm.requests}, ensure_ascii=False))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
