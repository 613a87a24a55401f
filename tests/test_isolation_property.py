"""Views are isolated: a Hypothesis state machine drives random operations through random views.

Each example makes three fresh tenants that share the same two user ids and two agent ids, so
two views may differ by tenant alone as well as by user or agent. The views: 12 leaves
(tenant, user, agent), 6 (tenant, user), 6 (tenant, agent) and 3 whole tenants; the unscoped
store is the admin view and only reads the ground truth. An example starts populated (the same
owners in all three tenants), then rules act through a random view: on a session of that view,
on one that the view misses by a single owner (the likeliest leak), or on any id at all. A
small model says which view owns what. After every step:

- every view lists exactly the model's sessions inside it;
- the rows in the database, read through the unscoped store, equal the model, so no call
  through a view changed anything outside it (a refused call changed nothing at all).

The store is async and a state machine is not: the test runs the machine in a worker thread,
which submits each call to the test's own event loop (where the ``store`` fixture lives) and
waits for it.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, or_, select

from mofa_persist import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PersistenceError,
    RetentionPolicy,
    Scope,
    Store,
)
from mofa_persist.models import (
    agent_state_table,
    api_calls_table,
    messages_table,
    sessions_table,
)
from mofa_persist.records import API_CALL_STATUSES
from mofa_persist.transfer import Selection, collect_stats, iter_export, prune

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from mofa_persist import ApiCall, Session, Usage

    Runner = Callable[[Coroutine[Any, Any, Any]], Any]

# An example holds up to ~20 sessions and every step ends with 27 listings and a read of the
# ground truth; these bounds keep the four backends together around a minute.
SETTINGS = settings(
    max_examples=40,
    stateful_step_count=10,
    deadline=None,  # a step is a few database round trips; their time varies by backend
    database=None,  # nothing written into the tree; a failure prints its steps to replay
)

TENANTS, USERS, AGENTS = range(3), range(2), range(2)
#: (tenant, user, agent) as indices into the example's ids; None: no owner (or, in a view key,
#: any owner).
Owner = tuple[int, int | None, int | None]
VIEW_KEYS: tuple[Owner, ...] = (
    *[(t, u, a) for t in TENANTS for u in USERS for a in AGENTS],
    *[(t, u, None) for t in TENANTS for u in USERS],
    *[(t, None, a) for t in TENANTS for a in AGENTS],
    *[(t, None, None) for t in TENANTS],
)
OWNER_FIELDS = {"tenant_id": 0, "user_id": 1, "agent_id": 2}
#: A pick this high means a session id that was never created.
PICK_UNKNOWN = 15
LIST_FILTERS: tuple[tuple[str, int] | None, ...] = (
    None,
    ("user_id", 0),
    ("user_id", 1),
    ("agent_id", 0),
    ("agent_id", 1),
    ("tenant_id", 0),
    ("tenant_id", 1),
)
AGES = st.none() | st.sampled_from([timedelta(0), timedelta(days=1)])

views = st.sampled_from(VIEW_KEYS)
picks = st.integers(0, PICK_UNKNOWN)
#: How a rule picks its session and view: see ``ViewIsolation.aim``.
reaches = st.sampled_from(["near", "own", "any"])
#: An ``expected_version``: none, the target's current one, or one that is not current.
guards = st.sampled_from([None, "current", "stale"])
policies = st.builds(
    RetentionPolicy,
    message_age=AGES,
    messages_per_session=st.none() | st.integers(0, 2),
    idle_session_age=AGES,
    state_versions=st.none() | st.integers(1, 2),
    api_call_age=AGES,
)
READS = (
    "get_session",
    "update_session",
    "get_messages",
    "get_no_messages",
    "count_messages",
    "append_nothing",
    "load_state",
    "load_first_state",
    "list_states",
)
TAMPERS = ("edit", "cut", "grow", "swap_id", "prefix")


def covers(view: Owner, owner: Owner) -> bool:
    """Whether a row owned by ``owner`` lies inside ``view``."""
    return all(mine is None or mine == theirs for mine, theirs in zip(view, owner, strict=True))


def near_miss(view: Owner, owner: Owner) -> bool:
    """Whether ``view`` misses ``owner`` by one field: it would cover it with that field open."""
    return not covers(view, owner) and any(
        covers((*view[:i], None, *view[i + 1 :]), owner)  # type: ignore[arg-type]
        for i in range(len(view))
    )


# ---------------------------------------------------------------------- the model


@dataclass
class SessionFacts:
    owner: Owner
    seqs: list[int] = field(default_factory=list)  # of the messages still stored
    last_seq: int = 0
    versions: list[int] = field(default_factory=list)  # of the states still stored
    state_version: int = 0

    def append(self, count: int) -> None:
        self.seqs += range(self.last_seq + 1, self.last_seq + count + 1)
        self.last_seq += count

    def save(self) -> None:
        self.state_version += 1
        self.versions.append(self.state_version)


@dataclass(frozen=True)
class CallFacts:
    owner: Owner
    session_id: uuid.UUID | None
    status: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Model:
    """What each session and provider call holds, and who owns it."""

    sessions: dict[uuid.UUID, SessionFacts] = field(default_factory=dict)
    known: list[uuid.UUID] = field(default_factory=list)  # every id created, deleted ones too
    calls: dict[uuid.UUID, CallFacts] = field(default_factory=dict)

    def create(self, sid: uuid.UUID, owner: Owner) -> None:
        self.sessions[sid] = SessionFacts(owner)
        if sid not in self.known:
            self.known.append(sid)

    def in_view(self, view: Owner) -> list[uuid.UUID]:
        """The live sessions of ``view``, oldest first."""
        return [sid for sid in self.known if sid in self.sessions and covers(view, self.owner(sid))]

    def owner(self, sid: uuid.UUID) -> Owner:
        return self.sessions[sid].owner

    def calls_in(self, view: Owner) -> dict[uuid.UUID, CallFacts]:
        return {cid: call for cid, call in self.calls.items() if covers(view, call.owner)}

    def drop_sessions(self, sids: list[uuid.UUID]) -> None:
        """Deleted sessions take their messages and states along; their calls stay, unattached."""
        for sid in sids:
            del self.sessions[sid]
        for cid, call in list(self.calls.items()):
            if call.session_id in sids:
                self.calls[cid] = CallFacts(
                    call.owner, None, call.status, call.prompt_tokens, call.completion_tokens
                )

    def rows_in(self, view: Owner) -> dict[str, int]:
        sessions = [self.sessions[sid] for sid in self.in_view(view)]
        return {
            "sessions": len(sessions),
            "messages": sum(len(facts.seqs) for facts in sessions),
            "states": sum(len(facts.versions) for facts in sessions),
            "api_calls": len(self.calls_in(view)),
        }


# ---------------------------------------------------------------------- the machine


class ViewIsolation(RuleBasedStateMachine):
    """One example: fresh tenants, the 27 views of them, and the model of what they hold."""

    def __init__(self, admin: Store, run: Runner) -> None:
        super().__init__()
        self.admin = admin  # unscoped: reads the ground truth, never acts in a rule
        self.run = run
        self.tenants = [uuid.uuid4() for _ in TENANTS]
        self.users = [uuid.uuid4() for _ in USERS]
        self.agents = [uuid.uuid4() for _ in AGENTS]
        self.index: dict[uuid.UUID, int] = {
            value: position
            for ids in (self.tenants, self.users, self.agents)
            for position, value in enumerate(ids)
        }
        self.views = {key: self.open_view(key) for key in VIEW_KEYS}
        self.model = Model()

    # ------------------------------------------------------------------ helpers

    def open_view(self, key: Owner) -> Store:
        """A new view object for ``key``; leaves and (tenant, agent) views by narrowing."""
        tenant, user, agent = self.ids_of(key)
        view = self.admin.scoped(tenant_id=tenant, user_id=user)
        return view if agent is None else view.scoped(tenant_id=tenant, agent_id=agent)

    def ids_of(self, owner: Owner) -> tuple[uuid.UUID, uuid.UUID | None, uuid.UUID | None]:
        t, u, a = owner
        return (
            self.tenants[t],
            None if u is None else self.users[u],
            None if a is None else self.agents[a],
        )

    def owner_of(self, *ids: object) -> tuple[object, ...]:
        """(tenant, user, agent) ids as model indices; an id of no example stays as it is."""
        return tuple(
            None if value is None else self.index.get(uuid.UUID(str(value)), value) for value in ids
        )

    def aim(self, view: Owner, reach: str, pick: int) -> tuple[Owner, uuid.UUID]:
        """Where a rule acts. ``own``: a live session and, instead of ``view``, a view that
        holds it (most views hold no session, so a random pair would rarely match).
        ``near``: a live session and a view that misses it by one owner (another tenant,
        user or agent than the session's): where a leak is most likely. ``any``: ``view``
        with any id ever created (of any view, deleted ones too), or one never created."""
        live = [sid for sid in self.model.known if sid in self.model.sessions]
        if reach == "any" or not live:
            if pick == PICK_UNKNOWN or not self.model.known:
                return view, uuid.uuid4()
            return view, self.model.known[pick % len(self.model.known)]
        sid = live[pick % len(live)]
        owner = self.model.owner(sid)
        fits = covers if reach == "own" else near_miss
        candidates = [key for key in VIEW_KEYS if fits(key, owner)]
        return candidates[VIEW_KEYS.index(view) % len(candidates)], sid

    def facts_in(self, view: Owner, sid: uuid.UUID) -> SessionFacts | None:
        """The session's facts if ``view`` holds it, else None."""
        facts = self.model.sessions.get(sid)
        return facts if facts is not None and covers(view, facts.owner) else None

    def expected_version(self, sid: uuid.UUID, guard: str | None) -> int | None:
        """The session's real current version (or a stale one), wherever it lives: a view
        that leaked would accept it, so a foreign session must still be NotFoundError."""
        if guard is None:
            return None
        facts = self.model.sessions.get(sid)
        current = 0 if facts is None else facts.state_version
        return current if guard == "current" else current + 1

    def refused(self, error: type[PersistenceError], call: Coroutine[Any, Any, Any]) -> None:
        with pytest.raises(error):
            self.run(call)

    # ------------------------------------------------------------------ writes

    @initialize(
        patterns=st.lists(
            st.tuples(st.sampled_from([None, *USERS]), st.sampled_from([None, *AGENTS])),
            min_size=1,
            max_size=3,
        )
    )
    def seed(self, patterns: list[tuple[int | None, int | None]]) -> None:
        """A populated start: each (user, agent) gets a session in every tenant, so the same
        user and agent ids live in three tenants, each with a message, a state and a call."""
        owners = [(t, user, agent) for user, agent in patterns for t in TENANTS]
        for owner, (session, call) in zip(owners, self.run(self._seed(owners)), strict=True):
            self.model.create(session.id, owner)
            self.model.sessions[session.id].append(1)
            self.model.sessions[session.id].save()
            self.model.calls[call.id] = CallFacts(owner, session.id, "success", 1, 1)

    async def _seed(self, owners: list[Owner]) -> list[tuple[Session, ApiCall]]:
        made = []
        for owner in owners:
            view = self.views[owner]  # the view of exactly this owner
            session = await view.create_session()
            await view.record_turn(session.id, [{"role": "user", "content": "hi"}], state={})
            call = await view.record_api_call(
                session_id=session.id,
                model="m",
                status="success",
                latency_ms=2,
                prompt_tokens=1,
                completion_tokens=1,
            )
            made.append((session, call))
        return made

    @rule(
        view=views,
        user=st.sampled_from([None, *USERS]),
        agent=st.sampled_from([None, *AGENTS]),
        explicit_id=st.booleans(),
    )
    def create_session(
        self, view: Owner, user: int | None, agent: int | None, explicit_id: bool
    ) -> None:
        """A view creates sessions in its scope; it may name its own user and agent, and a
        view that leaves them open may name any."""
        t, u, a = view
        owner = (t, user if u is None else u, agent if a is None else a)
        _, user_id, agent_id = self.ids_of(owner)
        wanted = uuid.uuid4() if explicit_id else None
        session: Session = self.run(
            self.views[view].create_session(
                user_id=None if user is None else user_id,
                agent_id=None if agent is None else agent_id,
                session_id=wanted,
            )
        )
        assert self.owner_of(session.tenant_id, session.user_id, session.agent_id) == owner
        assert wanted is None or session.id == wanted
        self.model.create(session.id, owner)

    @rule(view=views, field=st.sampled_from(["tenant_id", "user_id", "agent_id"]))
    def create_outside_the_scope(self, view: Owner, field: str) -> None:
        """Naming a tenant, user or agent other than the view's own is InvalidInputError."""
        position = OWNER_FIELDS[field]
        if view[position] is None:
            field, position = "tenant_id", 0  # the view leaves it open: go outside its tenant
        ids = (self.tenants, self.users, self.agents)[position]
        stranger = ids[(view[position] + 1) % len(ids)]  # type: ignore[operator]
        named: dict[str, Any] = {field: stranger}
        self.refused(InvalidInputError, self.views[view].create_session(**named))

    @rule(view=views, pick=picks)
    def create_with_a_taken_id(self, view: Owner, pick: int) -> None:
        """An id taken by a session of any view is refused (ConflictError today: ids are
        global, so this much reveals that the id exists) and nothing changes."""
        _, sid = self.aim(view, "own", pick)
        if sid not in self.model.sessions:
            return  # no live session to collide with
        self.refused(PersistenceError, self.views[view].create_session(session_id=sid))

    @rule(view=views, pick=picks)
    def create_with_a_deleted_id(self, view: Owner, pick: int) -> None:
        """The id of a deleted session (of any view) is free again, for any view."""
        gone = [sid for sid in self.model.known if sid not in self.model.sessions]
        if not gone:
            return
        sid = gone[pick % len(gone)]
        session = self.run(self.views[view].create_session(session_id=sid))
        assert session.id == sid
        assert self.owner_of(session.tenant_id, session.user_id, session.agent_id) == view
        self.model.create(sid, view)

    @rule(
        view=views,
        reach=reaches,
        pick=picks,
        how=st.sampled_from(["append_message", "append_messages", "record_turn"]),
        count=st.integers(0, 3),
        guard=guards,
    )
    def append(
        self, view: Owner, reach: str, pick: int, how: str, count: int, guard: str | None
    ) -> None:
        """Messages (and a turn's state) land only in a session of the view; any other id is
        NotFoundError, even with the right expected_version."""
        view, sid = self.aim(view, reach, pick)
        facts = self.facts_in(view, sid)
        store = self.views[view]
        call: Coroutine[Any, Any, Any]
        if how == "append_message":
            count = 1
            call = store.append_message(sid, "user", "m")
        elif how == "append_messages":
            count = max(count, 1)  # an empty batch is a read, see `read`
            call = store.append_messages(sid, [{"role": "user", "content": "m"}] * count)
        else:
            call = store.record_turn(
                sid,
                [{"role": "user", "content": "m"}] * count,
                state={"turn": count},
                expected_version=self.expected_version(sid, guard),
            )
        if facts is None:
            self.refused(NotFoundError, call)
        elif how == "record_turn" and guard == "stale":
            self.refused(ConflictError, call)
        else:
            self.run(call)
            facts.append(count)
            if how == "record_turn":
                facts.save()

    @rule(view=views, reach=reaches, pick=picks, guard=guards)
    def save_state(self, view: Owner, reach: str, pick: int, guard: str | None) -> None:
        """State is saved only in a session of the view; a foreign session is NotFoundError,
        never ConflictError (which would reveal its version)."""
        view, sid = self.aim(view, reach, pick)
        facts = self.facts_in(view, sid)
        call = self.views[view].save_state(
            sid, {"saved": True}, expected_version=self.expected_version(sid, guard)
        )
        if facts is None:
            self.refused(NotFoundError, call)
        elif guard == "stale":
            self.refused(ConflictError, call)
        else:
            assert self.run(call).version == facts.state_version + 1
            facts.save()

    @rule(
        view=views,
        reach=reaches,
        pick=picks,
        attach=st.booleans(),
        status=st.sampled_from(sorted(API_CALL_STATUSES)),
        prompt=st.integers(0, 50),
        completion=st.integers(0, 50),
    )
    def record_api_call(
        self,
        view: Owner,
        reach: str,
        pick: int,
        attach: bool,
        status: str,
        prompt: int,
        completion: int,
    ) -> None:
        """A call is recorded against a session of the view (taking its owner) or, without a
        session, against the view's own scope; a foreign session is NotFoundError."""
        view, sid = self.aim(view, reach, pick) if attach else (view, None)
        facts = None if sid is None else self.facts_in(view, sid)
        call = self.views[view].record_api_call(
            session_id=sid,
            model="m",
            status=status,
            latency_ms=prompt + completion,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
        if sid is not None and facts is None:
            self.refused(NotFoundError, call)
            return
        recorded = self.run(call)
        owner = view if facts is None else facts.owner
        assert self.owner_of(recorded.tenant_id, recorded.user_id, recorded.agent_id) == owner
        self.model.calls[recorded.id] = CallFacts(owner, sid, status, prompt, completion)

    @rule(view=views, reach=reaches, pick=picks)
    def delete_session(self, view: Owner, reach: str, pick: int) -> None:
        """A view deletes only its own sessions; any other id is NotFoundError."""
        view, sid = self.aim(view, reach, pick)
        call = self.views[view].delete_session(sid)
        if self.facts_in(view, sid) is None:
            self.refused(NotFoundError, call)
        else:
            self.run(call)
            self.model.drop_sessions([sid])

    # ------------------------------------------------------------------ reads by id

    @rule(view=views, reach=reaches, pick=picks, op=st.sampled_from(READS))
    def read(self, view: Owner, reach: str, pick: int, op: str) -> None:
        """Every read (and update) by id answers for a session of the view, exactly as the
        model says, and NotFoundError for any other id."""
        view, sid = self.aim(view, reach, pick)
        facts = self.facts_in(view, sid)
        store = self.views[view]
        reads: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
            "get_session": lambda: store.get_session(sid),
            "update_session": lambda: store.update_session(sid, title="renamed"),
            "get_messages": lambda: store.get_messages(sid),
            "get_no_messages": lambda: store.get_messages(sid, limit=0),
            "count_messages": lambda: store.count_messages(sid),
            "append_nothing": lambda: store.append_messages(sid, []),
            "load_state": lambda: store.load_state(sid),
            "load_first_state": lambda: store.load_state(sid, version=1),
            "list_states": lambda: store.list_states(sid, limit=None),
        }
        call = reads[op]()
        if facts is None or (op == "load_first_state" and 1 not in facts.versions):
            self.refused(NotFoundError, call)
            return
        result = self.run(call)
        if op in ("get_session", "update_session"):
            assert self.owner_of(result.tenant_id, result.user_id, result.agent_id) == facts.owner
            assert (result.last_seq, result.state_version) == (facts.last_seq, facts.state_version)
        elif op == "get_messages":
            assert [message.seq for message in result] == facts.seqs
        elif op in ("get_no_messages", "append_nothing"):
            assert result == []
        elif op == "count_messages":
            assert result == len(facts.seqs)
        elif op == "load_state":
            newest = facts.versions[-1] if facts.versions else None
            assert (None if result is None else result.version) == newest
        elif op == "load_first_state":
            assert result.version == 1
        else:
            assert [state.version for state in result] == facts.versions[::-1]

    @rule(view=views, near=st.booleans(), pick=picks)
    def foreign_id_is_not_found(self, view: Owner, near: bool, pick: int) -> None:
        """Every read and write by id of a session the view does not hold (one it misses
        by one owner, or any other) is NotFoundError: never ConflictError, never success."""
        view, sid = self.aim(view, "near" if near else "any", pick)
        if self.facts_in(view, sid) is not None:
            return  # "any" may land in the view; the other rules cover that
        outcomes = self.run(
            _every_call(self.views[view], sid, self.expected_version(sid, "current"))
        )
        assert outcomes == dict.fromkeys(outcomes, "NotFoundError")

    # ------------------------------------------------------------------ listings and cursors

    def _filter_args(self, chosen: tuple[str, int] | None) -> dict[str, Any]:
        if chosen is None:
            return {}
        name, position = chosen
        ids = {"tenant_id": self.tenants, "user_id": self.users, "agent_id": self.agents}[name]
        return {name: ids[position]}

    @rule(
        view=views,
        crowded=st.booleans(),
        limit=st.integers(1, 2),
        chosen=st.sampled_from(LIST_FILTERS),
        other_view=views,
        other_filter=st.sampled_from(LIST_FILTERS),
        tamper=st.tuples(st.sampled_from(TAMPERS), st.integers(0, 200), picks),
    )
    def page_through(
        self,
        view: Owner,
        crowded: bool,
        limit: int,
        chosen: tuple[str, int] | None,
        other_view: Owner,
        other_filter: tuple[str, int] | None,
        tamper: tuple[str, int, int],
    ) -> None:
        """Paging a view (with a filter) yields exactly its matching sessions, newest first,
        each once. Its cursor works in another object of the same view and is
        InvalidInputError in another view, the admin view, with other filters, or altered.
        ``crowded``: instead, the view with the most sessions, unfiltered, one session a
        page, so that there is a cursor to replay."""
        if crowded:
            view = max(VIEW_KEYS, key=lambda key: len(self.model.in_view(key)))
            limit, chosen = 1, None
        store, args = self.views[view], self._filter_args(chosen)
        pages = self.run(_all_pages(store, limit, args))
        listed = [session for page in pages for session in page.items]
        expected = [
            sid
            for sid in self.model.in_view(view)
            if chosen is None or self.model.owner(sid)[OWNER_FIELDS[chosen[0]]] == chosen[1]
        ]
        assert sorted(session.id for session in listed) == sorted(expected)  # each once
        stamps = [(session.updated_at, session.id) for session in listed]
        assert stamps == sorted(stamps, reverse=True)
        cursor = pages[0].next_cursor
        if cursor is None:
            return
        # The same scope, made in one call rather than by narrowing: the cursor is bound to
        # the scope, not to the object.
        tenant, user, agent = self.ids_of(view)
        same = self.admin.scoped(tenant_id=tenant, user_id=user, agent_id=agent)
        again = self.run(same.list_sessions(limit=limit, cursor=cursor, **args))
        assert [session.id for session in again.items] == [s.id for s in pages[1].items]
        if other_view != view:
            other = self.views[other_view]
            self.refused(InvalidInputError, other.list_sessions(limit=limit, cursor=cursor, **args))
        self.refused(
            InvalidInputError, self.admin.list_sessions(limit=limit, cursor=cursor, **args)
        )
        if other_filter != chosen:
            refiltered = self._filter_args(other_filter)
            self.refused(
                InvalidInputError, store.list_sessions(limit=limit, cursor=cursor, **refiltered)
            )
        altered = self.tampered(cursor, *tamper)
        self.refused(InvalidInputError, store.list_sessions(limit=limit, cursor=altered, **args))

    def tampered(self, cursor: str, how: str, at: int, pick: int) -> str:
        """``cursor`` with its content changed: a character, its length, the session it
        points at (any session, of any view) or its version prefix."""
        head, _, body = cursor.partition(".")
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        if how == "prefix":
            return f"v{int(head[1:]) + 1}.{body}" if head[1:].isdigit() else "x" + cursor
        if how == "cut":
            raw = raw[: at % len(raw)]
        elif how == "grow":
            raw += "0"
        elif how == "swap_id":
            stamp, hex_id, mac = raw.split("|")
            other = self.aim((0, None, None), "any", pick)[1].hex
            raw = f"{stamp}|{other if other != hex_id else uuid.uuid4().hex}|{mac}"
        else:
            position = at % len(raw)
            replacement = "1" if raw[position] == "0" else "0"
            raw = raw[:position] + replacement + raw[position + 1 :]
        return f"{head}.{base64.urlsafe_b64encode(raw.encode()).decode().rstrip('=')}"

    # ------------------------------------------------------------------ totals and transfer

    @rule(view=views, reach=reaches, pick=picks)
    def totals(self, view: Owner, reach: str, pick: int) -> None:
        """usage(), an export and collect_stats through a view cover exactly the view's
        rows. usage() of one session id counts its calls if the view holds it, else none;
        an export selection naming another tenant is InvalidInputError."""
        view, sid = self.aim(view, reach, pick)
        self.check_usage(view, None)
        self.check_usage(view, sid)
        self.check_export(view)
        stranger = Selection(tenant_id=self.tenants[(view[0] + 1) % len(TENANTS)])
        self.refused(InvalidInputError, _collect(iter_export(self.views[view], stranger)))
        result = self.run(collect_stats(self.views[view]))
        calls = self.model.calls_in(view).values()
        tokens = sum(call.prompt_tokens + call.completion_tokens for call in calls)
        assert result.totals == {**self.model.rows_in(view), "tokens": tokens}
        assert {row["tenant_id"] for row in result.by_tenant} <= {str(self.tenants[view[0]])}

    def check_usage(self, view: Owner, sid: uuid.UUID | None) -> None:
        usage: Usage = self.run(self.views[view].usage(session_id=sid))
        calls = [
            call
            for call in self.model.calls_in(view).values()
            if sid is None or call.session_id == sid
        ]
        by_status: dict[str, int] = {}
        for call in calls:
            by_status[call.status] = by_status.get(call.status, 0) + 1
        assert usage.calls == len(calls)
        assert usage.by_status == by_status
        assert usage.failures == len(calls) - by_status.get("success", 0)
        assert usage.prompt_tokens == sum(call.prompt_tokens for call in calls)
        assert usage.completion_tokens == sum(call.completion_tokens for call in calls)
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    def check_export(self, view: Owner) -> None:
        lines = self.run(_collect(iter_export(self.views[view], Selection())))
        header, end, rows = lines[0], lines[-1], lines[1:-1]
        assert (header["type"], end["type"]) == ("header", "end")
        found: dict[str, set[Any]] = {
            kind: set() for kind in ("session", "message", "state", "api_call")
        }
        for row in rows:
            kind = row["type"]
            if kind == "session":
                found[kind].add(uuid.UUID(row["id"]))
                owner = self.owner_of(row["tenant_id"], row["user_id"], row["agent_id"])
                assert owner == self.model.owner(uuid.UUID(row["id"]))
            elif kind == "message":
                found[kind].add((uuid.UUID(row["session_id"]), row["seq"]))
            elif kind == "state":
                found[kind].add((uuid.UUID(row["session_id"]), row["version"]))
            else:
                found[kind].add(uuid.UUID(row["id"]))
                owner = self.owner_of(row["tenant_id"], row["user_id"], row["agent_id"])
                assert covers(view, owner)  # type: ignore[arg-type]
        mine = self.model.in_view(view)
        facts = [self.model.sessions[sid] for sid in mine]
        assert found["session"] == set(mine)
        assert found["message"] == {
            (sid, seq) for sid, f in zip(mine, facts, strict=True) for seq in f.seqs
        }
        assert found["state"] == {
            (sid, v) for sid, f in zip(mine, facts, strict=True) for v in f.versions
        }
        assert found["api_call"] == set(self.model.calls_in(view))
        assert end["counts"] == self.model.rows_in(view)

    @rule(view=views, keep_last=st.none() | st.integers(0, 2), long_ago=st.booleans())
    def prune(self, view: Owner, keep_last: int | None, long_ago: bool) -> None:
        """transfer.prune through a view deletes whole sessions (no keep_last) or the older
        messages of sessions, of that view only."""
        older_than = timedelta(days=1) if long_ago else timedelta(0)
        report = self.run(prune(self.views[view], older_than=older_than, keep_last=keep_last))
        doomed = [] if long_ago else self.model.in_view(view)
        if keep_last is None:
            whole = [self.model.sessions[sid] for sid in doomed]
            expected = (
                len(doomed),
                sum(len(f.seqs) for f in whole),
                sum(len(f.versions) for f in whole),
            )
            self.model.drop_sessions(doomed)
        else:
            visited = messages = 0
            for sid in doomed:
                facts = self.model.sessions[sid]
                kept = [seq for seq in facts.seqs if seq > facts.last_seq - keep_last]
                if len(kept) < len(facts.seqs):
                    visited += 1
                    messages += len(facts.seqs) - len(kept)
                facts.seqs = kept
            expected = (visited, messages, 0)
        assert (report.sessions, report.messages, report.states) == expected

    @rule(view=views, policy=policies)
    def apply_retention(self, view: Owner, policy: RetentionPolicy) -> None:
        """A retention policy applied through a view deletes only rows of that view, and
        exactly what the policy says."""
        report = self.run(self.views[view].apply_retention(policy))
        counts = dict.fromkeys(("sessions", "messages", "agent_state", "api_calls"), 0)
        if policy.idle_session_age == timedelta(0):
            idle = self.model.in_view(view)
            for sid in idle:
                counts["sessions"] += 1
                counts["messages"] += len(self.model.sessions[sid].seqs)
                counts["agent_state"] += len(self.model.sessions[sid].versions)
            self.model.drop_sessions(idle)
        every_message = policy.message_age == timedelta(0)
        keep = policy.messages_per_session
        for sid in self.model.in_view(view):
            facts = self.model.sessions[sid]
            if every_message or keep is not None:
                kept = [
                    seq
                    for seq in facts.seqs
                    if not every_message and (keep is None or seq > facts.last_seq - keep)
                ]
                counts["messages"] += len(facts.seqs) - len(kept)
                facts.seqs = kept
            if policy.state_versions is not None:
                newest = [
                    v for v in facts.versions if v > facts.state_version - policy.state_versions
                ]
                counts["agent_state"] += len(facts.versions) - len(newest)
                facts.versions = newest
        if policy.api_call_age == timedelta(0):
            for cid in self.model.calls_in(view):
                counts["api_calls"] += 1
                del self.model.calls[cid]
        assert report.counts == counts

    @rule(tenant=st.sampled_from(TENANTS), user=st.sampled_from(USERS), narrow=st.booleans())
    def erase_user(self, tenant: int, user: int, narrow: bool) -> None:
        """erase_user through a tenant view (or that user's view in it) removes the user's
        sessions and calls in that tenant only, not in the other tenants that share the
        user id."""
        view = self.views[(tenant, user if narrow else None, None)]
        erasure = self.run(view.erase_user(self.users[user]))
        subject: Owner = (tenant, user, None)
        gone = self.model.in_view(subject)
        facts = [self.model.sessions[sid] for sid in gone]
        self.model.drop_sessions(gone)
        calls = [cid for cid, c in self.model.calls.items() if c.owner[:2] == subject[:2]]
        for cid in calls:
            del self.model.calls[cid]
        modeled = {
            "messages": sum(len(f.seqs) for f in facts),
            "agent_state": sum(len(f.versions) for f in facts),
            "api_calls": len(calls),
            "sessions": len(gone),
        }
        # Tables the model does not follow hold nothing of this example: nothing to erase.
        assert erasure.counts == {**dict.fromkeys(erasure.counts, 0), **modeled}
        assert erasure.finished_at is not None

    @rule(view=views, user=st.sampled_from(USERS))
    def erase_user_refused(self, view: Owner, user: int) -> None:
        """A view of one agent, or of another user, cannot erase a user: InvalidInputError."""
        _, u, a = view
        if a is None and u in (None, user):
            return  # such a view may erase the user: see erase_user
        self.refused(InvalidInputError, self.views[view].erase_user(self.users[user]))

    @rule(
        view=views,
        tenant=st.sampled_from(TENANTS),
        user=st.sampled_from([None, *USERS]),
        agent=st.sampled_from([None, *AGENTS]),
    )
    def narrow(self, view: Owner, tenant: int, user: int | None, agent: int | None) -> None:
        """A view can only be narrowed: another tenant, user or agent is InvalidInputError;
        a narrower view sees exactly its part of the wider one."""
        t, u, a = view
        ask = self.views[view].scoped
        kwargs: dict[str, Any] = {
            "tenant_id": self.tenants[tenant],
            "user_id": None if user is None else self.users[user],
            "agent_id": None if agent is None else self.agents[agent],
        }
        if (
            tenant != t
            or (u is not None and user is not None and user != u)
            or (a is not None and agent is not None and agent != a)
        ):
            with pytest.raises(InvalidInputError):
                ask(**kwargs)
            return
        key = (t, u if u is not None else user, a if a is not None else agent)
        narrowed = ask(**kwargs)
        assert narrowed.scope == Scope(*self.ids_of(key))
        page = self.run(narrowed.list_sessions(limit=100))
        assert {session.id for session in page.items} == set(self.model.in_view(key))

    # ------------------------------------------------------------------ invariant

    @invariant()
    def views_see_exactly_their_own_and_nothing_else_changed(self) -> None:
        """Every view lists the model's sessions inside it, and the database (read without a
        view) holds exactly the model's sessions, messages, states and calls."""
        listings, truth = self.run(self._observe())
        for key, page in listings.items():
            assert page.next_cursor is None
            assert {session.id for session in page.items} == set(self.model.in_view(key)), key
        sessions, messages, states, calls = truth
        assert sessions == {
            sid: (facts.owner, facts.last_seq, facts.state_version)
            for sid, facts in self.model.sessions.items()
        }
        assert messages == {sid: f.seqs for sid, f in self.model.sessions.items() if f.seqs}
        assert states == {sid: f.versions for sid, f in self.model.sessions.items() if f.versions}
        assert calls == self.model.calls

    async def _observe(self) -> tuple[dict[Owner, Any], tuple[dict[Any, Any], ...]]:
        pages = [await view.list_sessions(limit=100) for view in self.views.values()]
        listings = dict(zip(self.views, pages, strict=True))
        s_t, m_t, a_t, c_t = sessions_table, messages_table, agent_state_table, api_calls_table
        known = list(self.model.known)
        ours = or_(s_t.c.tenant_id.in_(self.tenants), s_t.c.id.in_(known))
        sessions: dict[uuid.UUID, Any] = {}
        messages: dict[uuid.UUID, list[int]] = {}
        states: dict[uuid.UUID, list[int]] = {}
        calls: dict[uuid.UUID, CallFacts] = {}
        async with self.admin.engine.connect() as conn:
            for row in await conn.execute(select(s_t).where(ours)):
                owner = self.owner_of(row.tenant_id, row.user_id, row.agent_id)
                sessions[row.id] = (owner, row.last_seq, row.state_version)
            rows = select(m_t.c.session_id, m_t.c.seq).where(m_t.c.session_id.in_(known))
            for sid, seq in await conn.execute(rows.order_by(m_t.c.session_id, m_t.c.seq)):
                messages.setdefault(sid, []).append(seq)
            rows = select(a_t.c.session_id, a_t.c.version).where(a_t.c.session_id.in_(known))
            for sid, version in await conn.execute(rows.order_by(a_t.c.session_id, a_t.c.version)):
                states.setdefault(sid, []).append(version)
            of_ours = or_(c_t.c.tenant_id.in_(self.tenants), c_t.c.session_id.in_(known))
            for row in await conn.execute(select(c_t).where(of_ours)):
                owner = self.owner_of(row.tenant_id, row.user_id, row.agent_id)
                calls[row.id] = CallFacts(
                    owner,  # type: ignore[arg-type]
                    row.session_id,
                    row.status,
                    row.prompt_tokens,
                    row.completion_tokens,
                )
        return listings, (sessions, messages, states, calls)

    def teardown(self) -> None:
        """Each example deletes what it made (its sessions take their rows with them)."""

        async def clean() -> None:
            calls, sessions = api_calls_table, sessions_table
            async with self.admin.engine.begin() as conn:
                await conn.execute(delete(calls).where(calls.c.tenant_id.in_(self.tenants)))
                await conn.execute(delete(sessions).where(sessions.c.tenant_id.in_(self.tenants)))

        self.run(clean())


async def _all_pages(store: Store, limit: int, args: dict[str, Any]) -> list[Any]:
    pages = [await store.list_sessions(limit=limit, **args)]
    while pages[-1].next_cursor is not None:
        pages.append(await store.list_sessions(limit=limit, cursor=pages[-1].next_cursor, **args))
    return pages


async def _every_call(store: Store, sid: uuid.UUID, version: int | None) -> dict[str, str]:
    """What each read and write by id of ``sid`` raised (or ``"returned"``)."""
    turn = [{"role": "user", "content": "x"}]
    calls: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
        "get_session": lambda: store.get_session(sid),
        "update_session": lambda: store.update_session(sid, title="taken", metadata={}),
        "append_message": lambda: store.append_message(sid, "user", "x"),
        "append_messages": lambda: store.append_messages(sid, turn),
        "append_no_messages": lambda: store.append_messages(sid, []),
        "get_messages": lambda: store.get_messages(sid),
        "get_newest_messages": lambda: store.get_messages(sid, limit=1),
        "get_no_messages": lambda: store.get_messages(sid, limit=0),
        "count_messages": lambda: store.count_messages(sid),
        "save_state": lambda: store.save_state(sid, {"x": 1}),
        "save_state_expecting": lambda: store.save_state(sid, {}, expected_version=version),
        "load_state": lambda: store.load_state(sid),
        "load_first_state": lambda: store.load_state(sid, version=1),
        "list_states": lambda: store.list_states(sid),
        "record_turn": lambda: store.record_turn(sid, turn, state={}, expected_version=version),
        "record_api_call": lambda: store.record_api_call(
            session_id=sid, model="m", status="success", latency_ms=1
        ),
        "delete_session": lambda: store.delete_session(sid),  # last: the others need it
    }
    outcomes = {}
    for name, call in calls.items():
        try:
            await call()
            outcomes[name] = "returned"
        except PersistenceError as error:
            outcomes[name] = type(error).__name__
    return outcomes


async def _collect(lines: Any) -> list[dict[str, Any]]:
    return [line async for line in lines]


async def test_views_only_see_and_change_their_own_rows(store: Store) -> None:
    """The machine runs in a worker thread; each store call runs on this test's loop."""
    loop = asyncio.get_running_loop()

    def run(call: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(call, loop).result(timeout=120)

    await asyncio.to_thread(
        run_state_machine_as_test, lambda: ViewIsolation(store, run), settings=SETTINGS
    )
