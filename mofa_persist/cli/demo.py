"""The ``demo`` command: runs the offline agent demo, which ships with the agents feature.

The demo is imported only when asked for, so the command says why when it is not installed
rather than failing at start-up.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
from typing import TYPE_CHECKING, Any

import typer

from .app import Output, app, describe, execute
from .options import UrlOption, VerboseOption  # noqa: TC001  (Typer reads them at runtime)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@app.command()
def demo(url: UrlOption = None, verbose: VerboseOption = False) -> None:
    """Run the offline agent demo (no network, no API key)."""
    output = Output(False, verbose)
    try:
        module = importlib.import_module("mofa_persist.demo")
    except ModuleNotFoundError as error:
        if error.name != "mofa_persist.demo":
            raise output.fail(describe(error)) from None
        raise output.fail(
            "the demo is not part of this version of mofa-persist (it comes with the agents "
            "feature)"
        ) from None
    main_function = getattr(module, "main", None)
    if not callable(main_function):
        raise output.fail("mofa_persist.demo has no main()")
    with _database_url(url):
        _run_demo(output, main_function)


@contextlib.contextmanager
def _database_url(url: str | None) -> Iterator[None]:
    """The demo reads DATABASE_URL; set it for the demo only, then put it back."""
    if url is None:
        yield
        return
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = previous


def _run_demo(output: Output, main_function: Callable[..., Any]) -> None:
    try:
        # The demo parses its own arguments: give it none rather than this command's argv.
        takes_argv = bool(inspect.signature(main_function).parameters)
        result = main_function([]) if takes_argv else main_function()
        if inspect.isawaitable(result):
            result = execute(output, _awaited(result))
    except typer.Exit:
        raise
    except SystemExit as done:
        result = done.code
    except Exception as error:  # the demo's own failure: one line, like every command
        raise output.crash(error) from None
    if isinstance(result, int) and result:
        raise typer.Exit(result)


async def _awaited(result: Any) -> Any:
    return await result
