"""OpenTelemetry spans and metrics for store operations, and the ``mofa_persist`` logger.

Instrumented as a library should be: through the application's global tracer and meter
providers (``opentelemetry-api`` only, the ``otel`` extra), so there is nothing to configure
here. Without the API installed nothing is recorded and each operation costs one ``None``
check; with the API but no provider set, two type checks (no no-op span is made).

What is recorded never includes a password, a message's content or an error's text: only
the database system, name and server address, the operation, and error type names.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConflictError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable

    from .backend import _Backend

T = TypeVar("T")

#: The library's logger: retries and lost connections (runner), schema migrations (migrate).
logger = logging.getLogger("mofa_persist")

try:
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
except ImportError:  # the otel extra is not installed: record nothing
    _trace = None  # type: ignore[assignment]
    _metrics = None  # type: ignore[assignment]

try:  # the type of the global meter provider until the application sets one
    from opentelemetry.metrics._internal import _ProxyMeterProvider as _UnsetMeters
except ImportError:  # another API layout: always go through the providers
    _UnsetMeters = None  # type: ignore[assignment,misc]

#: What get_tracer_provider and get_meter_provider look at before they answer with their
#: proxies: their module's provider (set once, never unset) and an environment variable naming
#: one. Reading them directly costs a fraction of a microsecond; the two calls cost about 4 us
#: (os.environ encodes each key it is asked about). ``None``: another API layout, or an
#: os.environ without its key table; then the calls are made.
_unset_check: tuple[Any, Any, Any, tuple[Any, ...]] | None = None
try:
    import opentelemetry.metrics._internal as _meters_module
    import opentelemetry.trace as _tracer_module
    from opentelemetry.environment_variables import (
        OTEL_PYTHON_METER_PROVIDER,
        OTEL_PYTHON_TRACER_PROVIDER,
    )

    if _tracer_module._TRACER_PROVIDER is None and _meters_module._METER_PROVIDER is None:
        _unset_check = (
            _tracer_module,
            _meters_module,
            os.environ._data,  # type: ignore[attr-defined]
            (
                os.environ.encodekey(OTEL_PYTHON_TRACER_PROVIDER),
                os.environ.encodekey(OTEL_PYTHON_METER_PROVIDER),
            ),
        )
except (ImportError, AttributeError):
    _unset_check = None

#: Instrumentation scope name, as the tracer and meter are named.
SCOPE = "mofa_persist"
#: OpenTelemetry's database semantic conventions: system names of the backends.
_SYSTEMS = {"postgresql": "postgresql", "mysql": "mysql", "sqlite": "sqlite", "memory": "sqlite"}

_tracer: Any = None
_duration: Any = None
_retries: Any = None
_conflicts: Any = None
_group_sizes: Any = None
#: Per backend, per action: the attributes of its spans and measurements (built once).
_ATTRIBUTES: weakref.WeakKeyDictionary[_Backend, dict[str, dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _setup() -> None:
    """Create the tracer and instruments (proxies until the application sets providers)."""
    global _tracer, _duration, _retries, _conflicts, _group_sizes
    if _trace is None or _metrics is None:
        return
    version = _version()
    _tracer = _trace.get_tracer(SCOPE, version)
    meter = _metrics.get_meter(SCOPE, version)
    _duration = meter.create_histogram(
        "db.client.operation.duration",
        unit="s",
        description="Duration of store operations, retries included.",
        explicit_bucket_boundaries_advisory=[
            0.0005,
            0.001,
            0.0025,
            0.005,
            0.01,
            0.025,
            0.05,
            0.1,
            0.25,
            0.5,
            1.0,
            2.5,
            5.0,
            10.0,
        ],
    )
    _retries = meter.create_counter(
        "mofa_persist.retries",
        unit="{retry}",
        description="Store operations retried after a lock race or a lost connection.",
    )
    _conflicts = meter.create_counter(
        "mofa_persist.conflicts",
        unit="{conflict}",
        description="Store operations that ended in ConflictError.",
    )
    _group_sizes = meter.create_histogram(
        "mofa_persist.group_commit.size",
        unit="{call}",
        description="Appends to one session written by one transaction (see grouping).",
        explicit_bucket_boundaries_advisory=[1, 2, 4, 8, 16, 32, 64, 128, 256],
    )
    meter.create_observable_up_down_counter(
        "db.client.connection.count",
        callbacks=[_pool_usage],
        unit="{connection}",
        description="Pooled connections of each store's engine, by state.",
    )


def _version() -> str:
    """The installed version (the package itself may still be importing)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mofa-persist")
    except PackageNotFoundError:
        return "0+unknown"


def _attributes(backend: _Backend, action: str) -> dict[str, Any]:
    """The span attributes of ``action`` on ``backend``: semantic conventions, no secrets."""
    per_action = _ATTRIBUTES.get(backend)
    if per_action is None:
        per_action = _ATTRIBUTES[backend] = {}
    found = per_action.get(action)
    if found is None:
        url = backend.url
        found = {"db.system.name": _SYSTEMS[url.kind], "db.operation.name": action}
        if url.database:
            found["db.namespace"] = url.database
        if url.kind in ("postgresql", "mysql"):
            found["server.address"] = url.sa_url.host or "localhost"
            found["server.port"] = url.sa_url.port or (5432 if url.kind == "postgresql" else 3306)
        per_action[action] = found
    return found


def _unconfigured() -> bool:
    """Neither global provider was set: every span and measurement would be a no-op, so
    none is made (a no-op span still costs several microseconds an operation)."""
    if _unset_check is not None:
        tracers, meters, environ, names = _unset_check
        if (
            tracers._TRACER_PROVIDER is None
            and meters._METER_PROVIDER is None
            and names[0] not in environ
            and names[1] not in environ
        ):
            return True  # what the calls below would find: both proxies
    return (
        _UnsetMeters is not None
        and isinstance(_trace.get_tracer_provider(), _trace.ProxyTracerProvider)
        and isinstance(_metrics.get_meter_provider(), _UnsetMeters)
    )


async def observe(backend: _Backend, action: str, call: Awaitable[T]) -> T:
    """Await one store operation inside its span, and record its duration."""
    if _tracer is None or _unconfigured():
        return await call
    attributes = _attributes(backend, action)
    started = time.perf_counter()
    with _tracer.start_as_current_span(
        action,
        kind=_trace.SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,  # an exception's text may quote what was stored
        set_status_on_exception=False,
    ) as span:
        try:
            result = await call
        except BaseException as error:
            error_type = type(error).__name__
            if isinstance(error, ConflictError):
                span.add_event("conflict", {"error.type": error_type})
                _conflicts.add(1, attributes)
            span.set_attribute("error.type", error_type)
            span.set_status(_trace.StatusCode.ERROR, error_type)
            _duration.record(
                time.perf_counter() - started, {**attributes, "error.type": error_type}
            )
            raise
    _duration.record(time.perf_counter() - started, attributes)
    return result


def retried(backend: _Backend, action: str, attempt: int, reason: str, lost: bool) -> None:
    """A failed attempt is tried again: a span event, a count and a log line."""
    if lost:
        logger.warning(
            "lost the connection to the %s database %s at %s during %r; reconnecting (attempt %d)",
            backend.url.kind,
            backend.url.database,
            backend.url.host,
            action,
            attempt + 1,
        )
    else:
        logger.info("retrying %r after %s (attempt %d)", action, reason, attempt + 1)
    if _tracer is None or _unconfigured():
        return
    details: dict[str, str | int] = {
        "mofa_persist.retry.reason": reason,
        "mofa_persist.retry.attempt": attempt + 1,
    }
    _trace.get_current_span().add_event("retry", details)
    _retries.add(1, {**_attributes(backend, action), "mofa_persist.retry.reason": reason})


def grouped(backend: _Backend, calls: int) -> None:
    """One transaction wrote the messages of ``calls`` append calls to one session (1: alone)."""
    if _tracer is None or _unconfigured():
        return
    _group_sizes.record(calls, _backend_attributes(backend))


def _backend_attributes(backend: _Backend) -> dict[str, Any]:
    """:func:`_attributes` without the operation: what identifies the database."""
    return {
        name: value
        for name, value in _attributes(backend, "").items()
        if name != "db.operation.name"
    }


def _pool_usage(_options: Any) -> Iterable[Any]:
    """Connections checked out (used) and idle, per store engine with a queue pool."""
    for backend, per_action in list(_ATTRIBUTES.items()):
        pool = backend.engine.sync_engine.pool
        checked_out = getattr(pool, "checkedout", None)
        checked_in = getattr(pool, "checkedin", None)
        if backend.closed or checked_out is None or checked_in is None:
            continue
        name = f"{backend.url.host}/{backend.url.database}"
        base = {"db.client.connection.pool.name": name}
        system = next(iter(per_action.values()), {}).get("db.system.name")
        if system is not None:
            base["db.system.name"] = system
        for state, count in (("used", checked_out()), ("idle", checked_in())):
            yield _metrics.Observation(count, {**base, "db.client.connection.state": state})


_setup()
