"""What a retention policy says: how long, and how much, of each kind of row is kept.

A policy is plain data, checked when it is made, so a typo in a policy file fails before any
row is touched. Each rule is optional and independent: a row goes when any rule says so.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError

_AGE = re.compile(r"\s*(\d+)\s*([smhdw])\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` as a duration."""
    match = _AGE.fullmatch(text.lower()) if isinstance(text, str) else None
    if match is None:
        raise InvalidInputError(f"{text!r} is not an age; write it like 30d, 12h, 90m or 2w")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long rows are kept. ``None`` (the default) leaves that kind of row alone.

    - ``message_age``: messages older than this are deleted.
    - ``messages_per_session``: only each session's newest N messages (by ``seq``) are kept.
    - ``idle_session_age``: sessions not updated for this long are deleted whole (messages
      and states with them; their provider calls stay, unattached, for usage reports).
    - ``state_versions``: only each session's newest N state snapshots are kept (N >= 1, so
      ``load_state()`` always finds the newest).
    - ``api_call_age``: provider calls older than this are deleted.
    - ``checkpoints_per_thread``: only the newest N checkpoints (N >= 1) of each LangGraph
      thread (per checkpoint namespace) are kept, with their pending writes and the channel
      values they use; the rest go (see :mod:`mofa_persist.lifecycle.checkpoints`).

    ``seq`` numbering and state versions go on where they were after a prune: the counters
    live on the session row, which message and state retention never delete.
    """

    message_age: timedelta | None = None
    messages_per_session: int | None = None
    idle_session_age: timedelta | None = None
    state_versions: int | None = None
    api_call_age: timedelta | None = None
    checkpoints_per_thread: int | None = None

    def __post_init__(self) -> None:
        for name in ("message_age", "idle_session_age", "api_call_age"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, timedelta):
                raise InvalidInputError(f"{name} must be a timedelta (or an age like '30d')")
            if value < timedelta(0):
                raise InvalidInputError(f"{name} must not be negative")
        for name, least in (
            ("messages_per_session", 0),
            ("state_versions", 1),
            ("checkpoints_per_thread", 1),
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidInputError(f"{name} must be an integer >= {least}")

    @property
    def empty(self) -> bool:
        return all(getattr(self, item.name) is None for item in fields(self))

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> RetentionPolicy:
        """A policy from a mapping: ages as ``"30d"`` strings (or seconds), counts as ints.

        The keys may sit at the top level or under a ``retention`` table.
        """
        if not isinstance(data, dict):
            raise InvalidInputError("a retention policy must be a table of rules")
        if "retention" in data:
            if set(data) != {"retention"} or not isinstance(data["retention"], dict):
                raise InvalidInputError("put every rule under [retention], or none of them")
            data = data["retention"]
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(
                f"unknown retention rule(s) {', '.join(unknown)}; the rules are "
                f"{', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name.endswith("_age"):
                values[name] = _age_value(name, value)
            else:
                values[name] = value
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path) -> RetentionPolicy:
        """A policy from a TOML file (see docs/lifecycle.md for an example)."""
        try:
            with Path(path).open("rb") as file:
                data = tomllib.load(file)
        except OSError as error:
            raise InvalidInputError(f"cannot read policy file {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise InvalidInputError(f"policy file {path} is not valid TOML: {error}") from None
        return cls.from_mapping(data)

    def as_dict(self) -> dict[str, Any]:
        """The policy as it would be written in a file (ages in seconds)."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, timedelta):
                value = f"{int(value.total_seconds())}s"
            if value is not None:
                out[item.name] = value
        return out


def _age_value(name: str, value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        try:
            return parse_age(value)
        except InvalidInputError as error:
            raise InvalidInputError(f"{name}: {error}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return timedelta(seconds=value)
    raise InvalidInputError(f"{name} must be an age like '30d' or a number of seconds")
