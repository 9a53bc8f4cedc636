"""The HTTP edge: parses requests, calls the trace jobs, renders answers.

Only this module knows Klein. Errors become problem+json answers in one place:
the ``handle_errors`` handler of :class:`Api`. Routes raise :class:`Problem`, or let
the domain's errors (a full queue, a refused target, invalid fields, ...) propagate;
:func:`problem_of` says which answer each of those is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zlib import crc32

import attrs
from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from mtrd.monitors.model import Delivery, MonitorSource, MonitorSpec, WebhookTarget
from mtrd.monitors.service import (
    MonitorNameTaken,
    MonitorNotFound,
    MonitorReadOnly,
    MonitorRecord,
    MonitorService,
    TooManyMonitors,
    visible,
)
from mtrd.tracing.events import Event
from mtrd.tracing.jobs import Deletion, QueueFull, TraceJobs
from mtrd.tracing.model import Trace, TraceRequest, TraceStatus
from mtrd.tracing.policy import TargetPolicy, TargetRefused
from mtrd.tracing.redis.errors import NoLiveVantage, RedisUnavailable
from mtrd.tracing.resolution import literal
from mtrd.tracing.store import BadCursor, StoreFull, TraceRecord, TraceStore
from mtrd.tracing.tenants import Cap, TenantCapReached
from mtrd.web.auth import tenant_of
from mtrd.web.bodies import BodyCache
from mtrd.web.direct import DirectRoutes
from mtrd.web.graph import render_dot
from mtrd.web.intake import InvalidFields, Submission, nesting_depth, parse_submission
from mtrd.web.limits import DEFAULT_LIMITS, MAX_BODY, MAX_LIST, MAX_NESTING, EdgeLimits
from mtrd.web.metrics import Metrics
from mtrd.web.monitor_intake import parse_monitor, parse_patch, parse_webhook
from mtrd.web.monitor_render import (
    encode_event,
    monitor_json,
    trace_hook_json,
    trace_webhook_body,
)
from mtrd.web.page import Page, wants_html, write_asset, write_shell
from mtrd.web.problems import Problem, invalid_fields, no_route, not_found, write_problem
from mtrd.web.render import summary_json
from mtrd.web.report import LOCAL_HOST, HostDisplay, render_report
from mtrd.web.sse import EventStream
from mtrd.webhooks.delivery import WebhookSender
from mtrd.webhooks.policy import WebhookRefused, WebhookUnresolved

if TYPE_CHECKING:
    from mtrd.monitors.shared import SharedMonitors, StoredMonitor
    from mtrd.tracing.redis.connection import RedisHealth
    from mtrd.tracing.redis.front import SharedTraces
    from mtrd.tracing.redis.store import StoredTrace

OPENAPI = Path(__file__).resolve().parent.parent / "openapi.yaml"
OPEN_POLICY = TargetPolicy()
STORE_RETRY_AFTER = 1  # seconds: Redis reconnects with back-off from 0.2 s
MONITOR_EVENTS_POLL = 0.5  # seconds between reads of a monitor's event log in Redis


class Readiness(Protocol):
    """What the edge reads of the probe pool."""

    @property
    def ready_workers(self) -> int:
        """Workers that answered their version check."""
        ...

    @property
    def size(self) -> int:
        """Workers the pool keeps."""
        ...

    @property
    def queued(self) -> int:
        """Probes waiting for a worker."""
        ...

    def queued_in(self, group: str | None) -> int:
        """Probes of one tenant's traces waiting for a worker."""
        ...


class Api:
    """The Klein application of one mtrd process.

    With the in-memory store the routes answer at once from ``jobs`` and ``store``. With
    Redis (``shared``), the trace routes read and write the shared store and answer
    with Deferreds; ``store_health`` then says whether Redis answers.
    """

    app = Klein()
    log = Logger()

    def __init__(
        self,
        *,
        pool: Readiness,
        jobs: TraceJobs,
        store: TraceStore,
        clock: IReactorTime,
        heartbeat: float = 15.0,
        page: Page | None = None,
        metrics: Metrics | None = None,
        limits: EdgeLimits = DEFAULT_LIMITS,
        policy: TargetPolicy = OPEN_POLICY,
        vantage: str = "default",
        shared: SharedTraces | None = None,
        store_health: Callable[[], RedisHealth] | None = None,
        monitors: MonitorService | None = None,
        webhooks: WebhookSender | None = None,
        shared_monitors: SharedMonitors | None = None,
    ) -> None:
        """``monitors`` serves /monitors (404 without); ``webhooks`` checks webhook URLs
        and delivers the webhooks of traces. With Redis, ``shared_monitors`` keeps the
        monitors and ``monitors`` holds those this replica runs."""
        self._monitors = monitors
        self._shared_monitors = shared_monitors
        self._webhooks = webhooks
        self._limits = limits
        self._vantage = vantage
        self._shared = shared
        self._store_health = store_health
        self._openapi = OPENAPI.read_bytes()  # read once, not on the reactor per request
        self._page = Page.load() if page is None else page
        self._policy = policy
        self._pool = pool
        self._jobs = jobs
        self._store = store
        self._clock = clock
        self._heartbeat = heartbeat
        self._metrics = metrics
        self._bodies = BodyCache()
        self._trace_hooks: dict[str, _TraceHook] = {}  # memory mode: by trace id
        self.draining = False
        self.sse_subscribers = 0

    def resource(self) -> Resource:
        """The resource that answers this API: the polling routes directly
        (:class:`~mtrd.web.direct.DirectRoutes`), every other request through Klein."""
        return DirectRoutes(self, self.app.resource())

    # -- traces -------------------------------------------------------------------------

    @app.route("/traces", methods=["POST"])
    def create(self, request: IRequest) -> bytes | Deferred[bytes]:
        """Start a trace: 202 with its resource and Location."""
        submission, webhook = _read_trace(_json_body(request, "the trace request"))
        trace_request = submission.request
        if self._shared is None and submission.vantage not in (None, self._vantage):
            raise no_live_vantage(submission.vantage, [self._vantage])
        if self.draining:
            raise Problem(
                503,
                "shutting-down",
                "Shutting down",
                "mtrd is shutting down and takes no new traces",
                headers=(("Retry-After", "5"),),
            )
        if webhook is not None and self._webhooks is None:
            raise invalid_fields([("webhook", "webhooks are not available here")])
        if self._shared is not None:
            # Some replica of the vantage runs it: this one's workers do not matter here.
            address = literal(trace_request.target)
            if address is not None:
                self._policy.check(address.address)
            # Only this replica's probes: each replica's pool serves its own runner.
            self._check_probes_waiting(tenant_of(request).name)
            return Deferred.fromCoroutine(
                self._create_shared(
                    request,
                    self._shared,
                    submission.request,
                    submission.vantage,
                    tenant_of(request).name,
                    webhook=webhook,
                )
            )
        if self._pool.ready_workers == 0:
            raise Problem(
                503,
                "not-ready",
                "Not ready",
                "no mtr-packet worker is running yet",
                headers=(("Retry-After", "1"),),
            )
        address = literal(trace_request.target)
        if address is not None:
            self._policy.check(address.address)
        if self._pool.queued >= self._limits.max_probes_waiting:
            raise Problem(
                429,
                "engine-saturated",
                "Too many probes waiting",
                f"{self._pool.queued} probes wait for an mtr-packet worker; retry shortly",
                headers=(("Retry-After", "2"),),
            )
        owner = tenant_of(request).name
        self._check_probes_waiting(owner)
        if webhook is not None:
            return Deferred.fromCoroutine(
                self._create_hooked(request, trace_request, webhook, owner)
            )
        record = self._jobs.submit(trace_request, owner=owner)
        request.setHeader(b"Location", f"/traces/{record.trace.id}".encode())
        return _body(request, 202, self._bodies.body(record))

    async def _create_hooked(
        self,
        request: IRequest,
        trace_request: TraceRequest,
        webhook: WebhookTarget,
        owner: str | None,
    ) -> bytes:
        """A trace whose end is delivered to ``webhook`` (checked first, as for monitors)."""
        sender = self._webhooks
        assert sender is not None
        await sender.check(webhook.url)
        record = self._jobs.submit(trace_request, owner=owner)
        hook = _TraceHook(webhook.url)
        self._keep_hook(record.trace.id, hook)

        def heard(event: Event) -> None:
            if event.kind == "done":
                assert isinstance(event.value, Trace)
                trace_id = event.value.id
                body = trace_webhook_body(event.value)
                sender.deliver(webhook, f"{trace_id}.done", "trace.finished", body, hook.heard)

        record.channel.subscribe(heard)
        request.setHeader(b"Location", f"/traces/{record.trace.id}".encode())
        return _body(request, 202, self._hooked(record.trace.id, self._bodies.body(record)))

    def _keep_hook(self, trace_id: str, hook: _TraceHook) -> None:
        """Remember a trace's webhook, forgetting those of traces the store let go."""
        for gone in [t for t in self._trace_hooks if self._store.get(t) is None]:
            del self._trace_hooks[gone]
        self._trace_hooks[trace_id] = hook

    def _hooked(self, trace_id: str, body: bytes) -> bytes:
        """The trace resource with its webhook's state, for a trace that has one."""
        hook = self._trace_hooks.get(trace_id)
        if hook is None:
            return body
        return _with_webhook(
            body, _compact(trace_hook_json(hook.url, list(hook.deliveries.values())))
        )

    def _check_probes_waiting(self, owner: str | None) -> None:
        if owner is None:
            return
        waiting, cap = self._pool.queued_in(owner), self._jobs.tenant_limits.max_probes_waiting
        if waiting >= cap:
            raise TenantCapReached(
                Cap.PROBES_WAITING, cap, 2, f"this tenant has {waiting} probes waiting"
            )

    def _visible(self, request: IRequest, trace_id: str) -> TraceRecord:
        """The record of a trace the caller may see; 404 for any other, as for one that
        does not exist, so ids say nothing about other tenants' traces."""
        record = self._store.get(trace_id)
        if record is None or not tenant_of(request).sees(record.trace):
            raise not_found(f"trace {trace_id}")
        return record

    async def _create_shared(
        self,
        request: IRequest,
        shared: SharedTraces,
        trace_request: TraceRequest,
        vantage: str | None,
        owner: str | None,
        *,
        webhook: WebhookTarget | None = None,
    ) -> bytes:
        sender = self._webhooks
        if webhook is not None:
            assert sender is not None
            await sender.check(webhook.url)
        stored = await shared.submit(trace_request, vantage, owner)
        if webhook is not None:
            assert sender is not None
            trace_id = stored.trace.id
            state = _HookWriter(shared, trace_id, webhook.url)
            await shared.set_webhook(trace_id, state.state(None))
            stored = attrs.evolve(stored, webhook=state.state(None))
            # The replica that took the POST follows the trace (wherever it runs) and
            # delivers its end; if this replica stops first, the webhook is not sent.
            delivering = _deliver_end(sender, webhook, state.heard)
            await shared.follow(trace_id, None, delivering, _nothing)
        request.setHeader(b"Location", f"/traces/{stored.trace.id}".encode())
        return _body(request, 202, _with_webhook(self._stored_body(stored), stored.webhook))

    def _stored_body(self, stored: StoredTrace) -> bytes:
        return self._bodies.rendered(stored.trace.id, stored.version, lambda: stored.trace)

    @app.route("/traces", methods=["GET"])
    def listing(self, request: IRequest) -> bytes | Deferred[bytes]:
        """Traces, newest first, filtered by status, a page at a time."""
        args = {
            k.decode(): [v.decode("utf-8", "replace") for v in vs]
            for k, vs in (request.args or {}).items()
        }
        errors = [
            (name, "unknown query parameter")
            for name in args
            if name not in ("status", "limit", "cursor")
        ]
        status = None
        if "status" in args:
            try:
                status = TraceStatus(args["status"][-1])
            except ValueError:
                errors.append(
                    ("status", "must be one of " + ", ".join(s.value for s in TraceStatus))
                )
        limit = 50
        if "limit" in args:
            text = args["limit"][-1]
            if parse_count(text) is None or not 1 <= int(text) <= MAX_LIST:
                errors.append(("limit", f"must be an integer between 1 and {MAX_LIST}"))
            else:
                limit = int(text)
        cursor = args["cursor"][-1] if args.get("cursor", [""])[-1] else None
        if errors:
            raise invalid_fields(errors)
        if self._shared is not None:
            return Deferred.fromCoroutine(
                self._listing_shared(request, self._shared, status, limit, cursor)
            )
        page, next_cursor = self._store.newest_first(
            status, limit, cursor, visible=tenant_of(request).sees
        )
        return _listing(request, page, next_cursor)

    async def _listing_shared(
        self,
        request: IRequest,
        shared: SharedTraces,
        status: TraceStatus | None,
        limit: int,
        cursor: str | None,
    ) -> bytes:
        page, next_cursor = await shared.newest_first(
            status, limit, cursor, visible=tenant_of(request).sees
        )
        return _listing(request, page, next_cursor)

    @app.route("/traces/<trace_id>", methods=["GET"])
    def show(self, request: IRequest, trace_id: str) -> bytes | Deferred[bytes]:
        """One trace as JSON (with an ETag), or as a text report."""
        hosts = _host_display(request)  # checked whatever the answer's type: bad input is 422
        if self._shared is not None:
            return Deferred.fromCoroutine(self._show_shared(request, self._shared, trace_id, hosts))
        record = self._visible(request, trace_id)
        hook = self._trace_hooks.get(trace_id)
        # A delivery's news changes the resource but not the trace's version.
        version = record.version if hook is None else f"{record.version}.{hook.changes}"
        if _not_modified(request, trace_id, version):
            return b""
        if _wants_dot(request.getHeader("accept")):
            return _dot(request, record.full_trace())
        if _prefers_text(request.getHeader("accept")):
            return _report(request, record.full_trace(), hosts)
        return _body(request, 200, self._hooked(trace_id, self._bodies.body(record)))

    async def _show_shared(
        self, request: IRequest, shared: SharedTraces, trace_id: str, hosts: HostDisplay
    ) -> bytes:
        stored = await _visible_shared(request, shared, trace_id)
        hook = stored.webhook
        # A delivery's news changes the resource but not the trace's version; the tag
        # must be the same whichever replica answers.
        version = stored.version if hook is None else f"{stored.version}.{crc32(hook.encode()):08x}"
        if _not_modified(request, trace_id, version):
            return b""
        if _wants_dot(request.getHeader("accept")):
            return _dot(request, stored.trace)
        if _prefers_text(request.getHeader("accept")):
            return _report(request, stored.trace, hosts)
        return _body(request, 200, _with_webhook(self._stored_body(stored), hook))

    @app.route("/traces/<trace_id>", methods=["DELETE"])
    def delete(self, request: IRequest, trace_id: str) -> bytes | Deferred[bytes]:
        """Cancel a queued or running trace (200), or remove a finished one (204)."""
        if self._shared is not None:
            return Deferred.fromCoroutine(self._delete_shared(request, self._shared, trace_id))
        self._visible(request, trace_id)
        outcome = self._jobs.delete(trace_id)
        if outcome is None:
            raise not_found(f"trace {trace_id}")
        if outcome is Deletion.REMOVED:
            self._bodies.forget(trace_id)
            self._trace_hooks.pop(trace_id, None)
            request.setResponseCode(204)
            return b""
        record = self._store.get(trace_id)
        assert record is not None
        return _body(request, 200, self._bodies.body(record))

    async def _delete_shared(self, request: IRequest, shared: SharedTraces, trace_id: str) -> bytes:
        await _visible_shared(request, shared, trace_id)
        outcome = await shared.delete(trace_id)
        if outcome is None:
            raise not_found(f"trace {trace_id}")
        if outcome is Deletion.REMOVED:
            self._bodies.forget(trace_id)
            request.setResponseCode(204)
            return b""
        # Cancelled if it was queued; a running one shows its status until its runner
        # has stopped it (within a second).
        stored = await shared.get(trace_id)
        if stored is None:
            raise not_found(f"trace {trace_id}")
        return _body(request, 200, self._stored_body(stored))

    @app.route("/traces/<trace_id>/events", methods=["GET"])
    def events(self, request: IRequest, trace_id: str) -> Deferred[None] | bytes:
        """Server-sent events of one trace; Last-Event-ID resumes after that id."""
        if self._shared is not None:
            return Deferred.fromCoroutine(self._events_shared(request, self._shared, trace_id))
        record = self._visible(request, trace_id)
        self._check_subscribers(record.channel.subscribers)
        after = _start_events(request)
        stream, finished, subscription = self._open_stream(request, trace_id)

        def deliver(event: Event) -> None:
            stream.send(event)
            if event.kind == "done" and not finished.called:
                stream.close()
                finished.callback(None)

        subscription.append(record.channel.subscribe(deliver, after))
        if stream.closed and not finished.called:
            finished.callback(None)  # a slow client was dropped while catching up
        return finished

    async def _events_shared(self, request: IRequest, shared: SharedTraces, trace_id: str) -> None:
        await _visible_shared(request, shared, trace_id)
        self._check_subscribers(shared.subscribers(trace_id))
        after = _start_events(request)
        stream, finished, subscription = self._open_stream(request, trace_id)

        def end() -> None:
            if not finished.called:
                stream.close()
                finished.callback(None)

        def deliver(event: Event) -> None:
            stream.send(event)
            if event.kind == "done":
                end()

        try:
            unsubscribe = await shared.follow(trace_id, after, deliver, end)
        except BaseException:
            stream.close()
            raise
        if unsubscribe is None:
            end()
        elif stream.closed:
            unsubscribe()  # the client left, or was too slow, while catching up
            end()
        else:
            subscription.append(unsubscribe)
        await finished

    def _open_stream(
        self, request: IRequest, trace_id: str, encoder: Callable[[Any], bytes] | None = None
    ) -> tuple[EventStream, Deferred[None], list[Callable[[], None]]]:
        """A new subscriber's stream, the Deferred that ends its response (cancelled when
        the client goes away), and the unsubscribe calls to make when the stream closes."""
        subscription: list[Callable[[], None]] = []

        def closed() -> None:
            self.sse_subscribers -= 1
            for unsubscribe in subscription:
                unsubscribe()

        self.sse_subscribers += 1
        stream = EventStream(
            request,
            trace_id=trace_id,
            clock=self._clock,
            heartbeat=self._heartbeat,
            max_backlog=self._limits.max_sse_backlog,
            on_close=closed,
            encoder=encoder,
        )
        finished: Deferred[None] = Deferred(lambda _: stream.close())
        return stream, finished, subscription

    def _check_subscribers(self, on_trace: int) -> None:
        limits = self._limits
        if (
            self.sse_subscribers >= limits.max_subscribers
            or on_trace >= limits.max_subscribers_per_trace
        ):
            raise Problem(
                429,
                "too-many-subscribers",
                "Too many subscribers",
                f"at most {limits.max_subscribers_per_trace} streams per trace and "
                f"{limits.max_subscribers} in all",
                headers=(("Retry-After", "5"),),
            )

    # -- monitors -----------------------------------------------------------------------

    def _monitor_service(self) -> MonitorService:
        if self._monitors is None:
            raise no_route("/monitors")
        return self._monitors

    def _owner(self, request: IRequest) -> str | None:
        """Whose monitors the caller may see: its tenant's, or None for every monitor
        (an admin, or anyone without auth)."""
        tenant = tenant_of(request)
        return None if tenant.admin else tenant.name

    @app.route("/monitors", methods=["POST"])
    def create_monitor(self, request: IRequest) -> Deferred[bytes]:
        """Add a monitor: 201 with its resource and Location."""
        monitors = self._monitor_service()
        spec = parse_monitor(_json_body(request, "the monitor"))
        return Deferred.fromCoroutine(self._create_monitor(request, monitors, spec))

    async def _create_monitor(
        self, request: IRequest, monitors: MonitorService, spec: MonitorSpec
    ) -> bytes:
        await self._check_monitor(spec)
        owner = tenant_of(request).name  # an admin's monitors are its own too
        if self._shared_monitors is not None:
            vantage = spec.vantage or self._vantage
            now = self._clock.seconds()
            stored = await self._shared_monitors.create(spec, owner, vantage, now)
            request.setHeader(b"Location", f"/monitors/{stored.id}".encode())
            return _json(request, 201, _not_yet_run(stored))
        record = monitors.create(spec, owner=owner, source=MonitorSource.API)
        request.setHeader(b"Location", f"/monitors/{record.id}".encode())
        return _json(request, 201, monitor_json(record))

    async def _check_monitor(self, spec: MonitorSpec) -> None:
        """The target and webhook policies, as for a trace: a literal target is checked
        now (a name when each run resolves it), a webhook URL after resolving its host."""
        if self._shared_monitors is None and spec.vantage not in (None, self._vantage):
            raise no_live_vantage(spec.vantage, [self._vantage])
        address = literal(spec.request.target)
        if address is not None:
            self._policy.check(address.address)
        if spec.webhook is not None:
            if self._webhooks is None:
                raise invalid_fields([("webhook", "webhooks are not available here")])
            await self._webhooks.check(spec.webhook.url)

    @app.route("/monitors", methods=["GET"])
    def list_monitors(self, request: IRequest) -> bytes | Deferred[bytes]:
        """Every monitor the caller may see, oldest first."""
        monitors = self._monitor_service()
        if self._shared_monitors is not None:
            return Deferred.fromCoroutine(self._list_shared(request, self._shared_monitors))
        listed = monitors.listing(self._owner(request))
        return _json(request, 200, {"monitors": [monitor_json(r) for r in listed]})

    async def _list_shared(self, request: IRequest, shared: SharedMonitors) -> bytes:
        owner = self._owner(request)
        stored = [m for m in await shared.listing() if visible(m.owner, owner)]
        stored.sort(key=lambda m: m.created_at)
        states = await shared.states([m.id for m in stored])
        documents = []
        for monitor, state in zip(stored, states, strict=True):
            local = self._local_monitor(monitor.id)
            if local is not None:
                documents.append(monitor_json(local))
            else:
                documents.append(_not_yet_run(monitor) if state is None else json.loads(state))
        return _json(request, 200, {"monitors": documents})

    @app.route("/monitors/<monitor_id>", methods=["GET"])
    def show_monitor(self, request: IRequest, monitor_id: str) -> bytes | Deferred[bytes]:
        """One monitor: settings, current path, last runs, open alerts, path history."""
        monitors = self._monitor_service()
        if self._shared_monitors is not None:
            return Deferred.fromCoroutine(
                self._show_shared_monitor(request, self._shared_monitors, monitor_id)
            )
        record = monitors.get(monitor_id, self._owner(request))
        return _json(request, 200, monitor_json(record))

    def _local_monitor(self, monitor_id: str) -> MonitorRecord | None:
        """The monitor if this replica runs it (Redis mode), else None."""
        try:
            return self._monitor_service().get(monitor_id)
        except MonitorNotFound:
            return None

    async def _shared_monitor(
        self, request: IRequest, shared: SharedMonitors, monitor_id: str
    ) -> StoredMonitor:
        stored = await shared.get(monitor_id)
        owner = self._owner(request)
        if stored is None or not visible(stored.owner, owner):
            raise MonitorNotFound(monitor_id)
        return stored

    async def _show_shared_monitor(
        self, request: IRequest, shared: SharedMonitors, monitor_id: str
    ) -> bytes:
        stored = await self._shared_monitor(request, shared, monitor_id)
        local = self._local_monitor(monitor_id)
        if local is not None:  # run here: the freshest view
            return _json(request, 200, monitor_json(local))
        (state,) = await shared.states([monitor_id])
        if state is None:
            return _json(request, 200, _not_yet_run(stored))
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        return state

    @app.route("/monitors/<monitor_id>", methods=["PATCH"])
    def update_monitor(self, request: IRequest, monitor_id: str) -> Deferred[bytes]:
        """Change any of a monitor's fields, ``paused`` included."""
        monitors = self._monitor_service()
        if self._shared_monitors is not None:
            body = _json_body(request, "the changes")
            return Deferred.fromCoroutine(
                self._update_shared(request, self._shared_monitors, monitor_id, body)
            )
        record = monitors.get(monitor_id, self._owner(request))
        if record.source is MonitorSource.FILE:
            raise MonitorReadOnly(record.spec.name)
        spec = parse_patch(record.spec, _json_body(request, "the changes"))
        return Deferred.fromCoroutine(self._update_monitor(request, monitors, monitor_id, spec))

    async def _update_shared(
        self, request: IRequest, shared: SharedMonitors, monitor_id: str, body: object
    ) -> bytes:
        stored = await self._shared_monitor(request, shared, monitor_id)
        if stored.source is MonitorSource.FILE:
            raise MonitorReadOnly(stored.spec.name)
        spec = parse_patch(stored.spec, body)
        await self._check_monitor(spec)
        # The replica that runs it takes the new settings at its next sync (within a second).
        return _json(request, 200, _not_yet_run(await shared.update(stored, spec)))

    async def _update_monitor(
        self, request: IRequest, monitors: MonitorService, monitor_id: str, spec: MonitorSpec
    ) -> bytes:
        await self._check_monitor(spec)
        record = monitors.update(monitor_id, spec, self._owner(request))
        return _json(request, 200, monitor_json(record))

    @app.route("/monitors/<monitor_id>", methods=["DELETE"])
    def delete_monitor(self, request: IRequest, monitor_id: str) -> bytes | Deferred[bytes]:
        """Remove a monitor (204); its past runs stay as traces until they expire."""
        monitors = self._monitor_service()
        if self._shared_monitors is not None:
            return Deferred.fromCoroutine(
                self._delete_shared_monitor(request, self._shared_monitors, monitor_id)
            )
        monitors.delete(monitor_id, self._owner(request))
        request.setResponseCode(204)
        return b""

    async def _delete_shared_monitor(
        self, request: IRequest, shared: SharedMonitors, monitor_id: str
    ) -> bytes:
        stored = await self._shared_monitor(request, shared, monitor_id)
        if stored.source is MonitorSource.FILE:
            raise MonitorReadOnly(stored.spec.name)
        await shared.delete(stored)
        request.setResponseCode(204)
        return b""

    @app.route("/monitors/<monitor_id>/events", methods=["GET"])
    def monitor_events(self, request: IRequest, monitor_id: str) -> Deferred[None]:
        """Server-sent events of one monitor: run, path_change, alert; Last-Event-ID resumes.

        With Redis, a replica that does not run the monitor follows the log of events its
        runner keeps in Redis."""
        try:
            record = self._monitor_service().get(monitor_id, self._owner(request))
        except MonitorNotFound:
            if self._shared_monitors is None:
                raise
            shared = self._shared_monitors
            visible = Deferred.fromCoroutine(self._shared_monitor(request, shared, monitor_id))
            return visible.addCallback(
                lambda _: self._follow_shared_monitor(request, shared, monitor_id)
            )
        self._check_subscribers(record.channel.subscribers)
        after = _start_events(request)
        stream, finished, subscription = self._open_stream(request, monitor_id, encode_event)

        def ended() -> None:
            if not finished.called:
                stream.close()
                finished.callback(None)

        subscription.append(record.channel.subscribe(stream.send, after, ended))
        if stream.closed and not finished.called:
            finished.callback(None)
        return finished

    def _follow_shared_monitor(
        self, request: IRequest, shared: SharedMonitors, monitor_id: str
    ) -> Deferred[None]:
        """Follow the monitor's event log in Redis (its runner is another replica)."""
        self._check_subscribers(0)
        after = _start_events(request)
        stream, finished, subscription = self._open_stream(request, monitor_id, lambda b: b)
        last = [0 if after is None else after]

        def ended() -> None:
            if poll.running:
                poll.stop()
            if not finished.called:
                stream.close()
                finished.callback(None)

        async def read() -> None:
            try:
                events = await shared.events_after(monitor_id, last[0])
            except Exception:
                events = []  # Redis did not answer: try again at the next poll
            if events is None:  # deleted
                ended()
                return
            for event_id, data in events:
                last[0] = event_id
                stream.send(data)

        poll = LoopingCall(lambda: Deferred.fromCoroutine(read()))
        poll.clock = self._clock
        subscription.append(lambda: poll.stop() if poll.running else None)
        poll.start(MONITOR_EVENTS_POLL, now=True)
        return finished

    # -- service ------------------------------------------------------------------------

    @app.route("/vantage-points", methods=["GET"])
    def vantage_points(self, request: IRequest) -> bytes | Deferred[bytes]:
        """Where traces can be probed from: the live vantages, or this process alone with
        the in-memory store."""
        if self._shared is not None:
            return Deferred.fromCoroutine(self._vantage_points_shared(request, self._shared))
        point = {
            "name": self._vantage,
            "replicas": 1,
            "capacity": self._jobs.max_running,
            "running": self._jobs.running_traces,
            "ready": self._pool.ready_workers > 0,
        }
        return _json(request, 200, {"vantage_points": [point]})

    async def _vantage_points_shared(self, request: IRequest, shared: SharedTraces) -> bytes:
        points = [attrs.asdict(point) for point in await shared.vantage_points()]
        return _json(request, 200, {"vantage_points": points})

    @app.route("/openapi.yaml", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        """This API, described in OpenAPI 3.1."""
        request.setHeader(b"Content-Type", b"application/yaml")
        return self._openapi

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        """The process serves HTTP."""
        return _json(request, 200, {"status": "ok"})

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: IRequest) -> bytes:
        """Ready once a mtr-packet worker answered its version check and, with Redis, while
        Redis answers; not while draining."""
        ready = self._pool.ready_workers
        health = None if self._store_health is None else self._store_health()
        store_ready = health is None or health.ready
        status = "draining" if self.draining else "ready" if ready and store_ready else "not ready"
        body: dict[str, Any] = {
            "status": status,
            "workers": {"ready": ready, "size": self._pool.size},
        }
        if health is not None:
            body["store"] = {
                "name": "redis",
                "ready": health.ready,
                "state": health.state.value,
                "error": health.last_error,
            }
        return _json(request, 200 if status == "ready" else 503, body)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        """Prometheus metrics in the text format."""
        if self._metrics is None:
            raise no_route("/metrics")
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return self._metrics.exposition()

    # -- the web page ---------------------------------------------------------------------

    @app.route("/", methods=["GET"])
    def home(self, request: IRequest) -> bytes:
        """The page for a browser; any other client gets the 404 it always got here."""
        if wants_html(request.getHeader("accept")):
            return write_shell(request, self._page)
        raise no_route("/")

    @app.route("/ui/<view>/<name>", methods=["GET"])
    def shared_page(self, request: IRequest, view: str, name: str) -> bytes:
        """The shareable address of a trace or a monitor: the page, which then reads it."""
        if view not in ("traces", "monitors") or not name:
            raise no_route(request.path.decode("utf-8", "replace"))
        return write_shell(request, self._page)

    @app.route("/static/<digest>/<name>", methods=["GET"])
    def static(self, request: IRequest, digest: str, name: str) -> bytes:
        """A file of the page, by the digest of its release."""
        asset = self._page.asset(digest, name)
        if asset is None:
            raise no_route(request.path.decode("utf-8", "replace"))
        return write_asset(request, asset)

    # -- errors: the one place they become HTTP answers ----------------------------------

    @app.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Failure) -> bytes:
        """Whatever a route raised, answered as problem+json: the problem it raised, a
        domain error as :func:`problem_of` maps it, werkzeug's routing errors, and 500
        for a fault of mtrd's own. Klein calls this; so do the direct routes
        (:mod:`mtrd.web.direct`), which answer the polling routes without Klein."""
        error = failure.value
        if isinstance(error, Problem):
            return self._render(request, error)
        if isinstance(error, DOMAIN_ERRORS):
            return self._render(request, problem_of(error))
        if isinstance(error, NotFound):
            return self._render(request, no_route(request.path.decode("utf-8", "replace")))
        if isinstance(error, MethodNotAllowed):
            return self._wrong_method(request, error)
        if isinstance(error, HTTPException):
            # Other errors werkzeug raises while routing (e.g. a path it cannot decode).
            status = error.code or 400
            return self._render(
                request,
                Problem(status, "bad-request", error.name, error.description or "a bad request"),
            )
        self.log.failure("unhandled error answering {path}", failure, path=request.path)
        return self._render(
            request,
            Problem(500, "internal-error", "Internal error", "mtrd failed to answer; see its log"),
        )

    def _wrong_method(self, request: IRequest, error: MethodNotAllowed) -> bytes:
        """405 problem naming the allowed methods."""
        allowed = sorted(error.valid_methods or [])
        method = request.method.decode("ascii", "replace")
        return self._render(
            request,
            Problem(
                405,
                "method-not-allowed",
                "Method not allowed",
                f"{method} is not allowed here; use {', '.join(allowed)}",
                headers=(("Allow", ", ".join(allowed)),),
            ),
        )

    def _render(self, request: IRequest, problem: Problem) -> bytes:
        return write_problem(request, problem, request.path.decode("utf-8", "replace"))


@attrs.define
class _TraceHook:
    """A trace's webhook URL and its deliveries' latest states (memory mode)."""

    url: str
    deliveries: dict[str, Delivery] = attrs.Factory(dict)  # by event id
    changes: int = 0

    def heard(self, delivery: Delivery) -> None:
        self.deliveries[delivery.event_id] = delivery
        self.changes += 1


@attrs.define
class _HookWriter:
    """Writes the state of a trace's webhook to Redis, one write at a time and the latest
    last, so a slow write never overwrites newer news (Redis mode)."""

    shared: SharedTraces
    trace_id: str
    url: str
    _next: str | None = None
    _writing: bool = False

    def state(self, delivery: Delivery | None) -> str:
        return _compact(trace_hook_json(self.url, [] if delivery is None else [delivery]))

    def heard(self, delivery: Delivery) -> None:
        self._next = self.state(delivery)
        if not self._writing:
            Deferred.fromCoroutine(self._write())

    async def _write(self) -> None:
        self._writing = True
        try:
            while self._next is not None:
                state, self._next = self._next, None
                try:
                    await self.shared.set_webhook(self.trace_id, state)
                except RedisUnavailable as e:
                    _log.warn(
                        "cannot record trace {id}'s webhook state: {error}",
                        id=self.trace_id,
                        error=e,
                    )
        finally:
            self._writing = False


_log = Logger()


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _with_webhook(body: bytes, state: str | None) -> bytes:
    """The trace resource with its webhook's state (JSON text) as ``webhook``."""
    if state is None:
        return body
    resource = json.loads(body)
    resource["webhook"] = json.loads(state)
    return _compact(resource).encode()


def _deliver_end(
    sender: WebhookSender,
    webhook: WebhookTarget,
    on_status: Callable[[Delivery], None] = lambda _: None,
) -> Callable[[Event], None]:
    """A trace subscriber that delivers the trace's end to ``webhook``."""

    def heard(event: Event) -> None:
        if event.kind == "done":
            assert isinstance(event.value, Trace)
            trace_id = event.value.id
            body = trace_webhook_body(event.value)
            sender.deliver(webhook, f"{trace_id}.done", "trace.finished", body, on_status)

    return heard


def _nothing() -> None:
    """Nothing to do when a followed trace's stream ends."""


def _not_yet_run(stored: StoredMonitor) -> dict[str, Any]:
    """A monitor kept in Redis whose runner has not published what it saw yet."""
    record = MonitorRecord(stored.id, stored.spec, stored.source, stored.owner, stored.created_at)
    return monitor_json(record)


def _read_trace(body: object) -> tuple[Submission, WebhookTarget | None]:
    """A POSTed trace and its optional ``webhook``; one error names every field at fault."""
    if not isinstance(body, dict) or "webhook" not in body:
        return parse_submission(body), None
    errors: list[tuple[str, str]] = []
    raw = body["webhook"]
    webhook = None if raw is None else parse_webhook(raw, "webhook", errors)
    try:
        submission = parse_submission({k: v for k, v in body.items() if k != "webhook"})
    except InvalidFields as e:
        raise InvalidFields(e.errors + errors) from None
    if errors:
        raise InvalidFields(errors)
    return submission, webhook


def _json_body(request: IRequest, what: str) -> object:
    """The request's JSON body, checked: its media type, its size, its nesting."""
    content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"send {what} as application/json",
        )
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise Problem(413, "body-too-large", "Body too large", f"the limit is {MAX_BODY} bytes")
    if nesting_depth(raw) > MAX_NESTING:
        raise Problem(
            400,
            "malformed-json",
            "Malformed JSON",
            f"the body nests deeper than {MAX_NESTING} levels",
        )
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise Problem(400, "malformed-json", "Malformed JSON", _json_error(e)) from None


DOMAIN_ERRORS = (
    InvalidFields,
    BadCursor,
    TargetRefused,
    QueueFull,
    StoreFull,
    TenantCapReached,
    NoLiveVantage,
    RedisUnavailable,
    MonitorNotFound,
    MonitorNameTaken,
    MonitorReadOnly,
    TooManyMonitors,
    WebhookRefused,
    WebhookUnresolved,
)
"""The errors of the trace and monitor domains that :func:`problem_of` answers."""


def problem_of(error: Exception) -> Problem:
    """The answer to an error of the trace domain."""
    if isinstance(error, InvalidFields):
        return invalid_fields(error.errors)
    if isinstance(error, BadCursor):
        return invalid_fields([("cursor", "not a cursor this service handed out")])
    if isinstance(error, TargetRefused):
        return Problem(
            403,
            "forbidden-target",
            "Forbidden target",
            str(error),
            errors=(("target", error.rule),),
        )
    if isinstance(error, QueueFull):
        return Problem(
            429,
            "queue-full",
            "Too many queued traces",
            str(error),
            headers=(("Retry-After", str(error.retry_after)),),
        )
    if isinstance(error, StoreFull):
        return Problem(
            429,
            "store-full",
            "Too many active traces",
            str(error),
            headers=(("Retry-After", str(error.retry_after)),),
        )
    if isinstance(error, TenantCapReached):
        return Problem(
            429,
            error.cap.value,
            "Tenant limit reached",
            str(error),
            headers=(("Retry-After", str(error.retry_after)),),
        )
    if isinstance(error, NoLiveVantage):
        return no_live_vantage(error.vantage, list(error.live))
    if isinstance(error, RedisUnavailable):
        return Problem(
            503,
            "store-unavailable",
            "Trace store unavailable",
            f"the shared trace store does not answer: {error}",
            headers=(("Retry-After", str(STORE_RETRY_AFTER)),),
        )
    return _monitor_problem(error)


def _monitor_problem(error: Exception) -> Problem:
    """The answer to an error of the monitors."""
    if isinstance(error, MonitorNotFound):
        return not_found(f"monitor {error}")
    if isinstance(error, MonitorNameTaken):
        return Problem(409, "monitor-name-taken", "Monitor name taken", str(error),
                       errors=(("name", "is taken"),))  # fmt: skip
    if isinstance(error, MonitorReadOnly):
        return Problem(409, "monitor-read-only", "Monitor is read-only", str(error))
    if isinstance(error, TooManyMonitors):
        if error.owner is not None:
            return Problem(429, Cap.MONITORS.value, "Tenant limit reached", str(error))
        return Problem(429, "too-many-monitors", "Too many monitors", str(error))
    if isinstance(error, WebhookRefused):
        return Problem(403, "forbidden-webhook", "Forbidden webhook", str(error),
                       errors=(("webhook.url", error.rule),))  # fmt: skip
    if isinstance(error, WebhookUnresolved):
        return invalid_fields([("webhook.url", str(error))])
    raise TypeError(f"no problem answer for {error!r}")


async def _visible_shared(request: IRequest, shared: SharedTraces, trace_id: str) -> StoredTrace:
    """A shared trace the caller may see; 404 for any other (see ``Api._visible``)."""
    stored = await shared.get(trace_id)
    if stored is None or not tenant_of(request).sees(stored.trace):
        raise not_found(f"trace {trace_id}")
    return stored


def no_live_vantage(vantage: str, live: list[str]) -> Problem:
    """422 for a trace asked of a vantage no live replica serves."""
    names = ", ".join(live) if live else "none"
    return invalid_fields(
        [("vantage", f"no live replica probes from {vantage}; live vantage points: {names}")]
    )


def _json(
    request: IRequest, status: int, body: object, content_type: bytes = b"application/json"
) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    return json.dumps(body, separators=(",", ":")).encode()


def _listing(request: IRequest, page: list[Trace], next_cursor: str | None) -> bytes:
    return _json(
        request, 200, {"traces": [summary_json(t) for t in page], "next_cursor": next_cursor}
    )


def _not_modified(request: IRequest, trace_id: str, version: int | str) -> bool:
    """Set the ETag; True (and 304) when the client has this version already."""
    etag = f'"{trace_id}.{version}"'
    request.setHeader(b"ETag", etag.encode())
    request.setHeader(b"Vary", b"Accept")
    if etag in _tags(request.getHeader("if-none-match")):
        request.setResponseCode(304)
        return True
    return False


def _report(request: IRequest, trace: Trace, hosts: HostDisplay) -> bytes:
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return render_report(trace, LOCAL_HOST, hosts).encode()


def _host_display(request: IRequest) -> HostDisplay:
    """The report's ``hosts`` query parameter (both, address or name)."""
    given = (request.args or {}).get(b"hosts")
    if not given:
        return HostDisplay.BOTH
    try:
        return HostDisplay(given[-1].decode("utf-8", "replace"))
    except ValueError:
        raise invalid_fields(
            [("hosts", "must be one of " + ", ".join(d.value for d in HostDisplay))]
        ) from None


def _dot(request: IRequest, trace: Trace) -> bytes:
    request.setHeader(b"Content-Type", b"text/vnd.graphviz; charset=utf-8")
    return render_dot(trace).encode()


def _wants_dot(accept: str | bytes | None) -> bool:
    if accept is None:
        return False
    text = accept.decode("latin-1") if isinstance(accept, bytes) else accept
    types = [part.split(";")[0].strip().lower() for part in text.split(",")]
    return bool(types) and types[0] == "text/vnd.graphviz"


def _start_events(request: IRequest) -> int | None:
    """Headers of an event stream; the Last-Event-ID to resume after, if any."""
    last = request.getHeader("last-event-id")
    request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"X-Accel-Buffering", b"no")
    return None if last is None else parse_count(last.strip())


MAX_COUNT_DIGITS = 18


def parse_count(text: str) -> int | None:
    """A whole number a client sent (a query parameter, a header), or None: ASCII digits
    only (``str.isdigit`` also takes ``²``, which ``int`` refuses), and few enough that
    ``int`` takes them (it refuses over 4300) and the value fits a 64-bit counter."""
    if not text.isascii() or not text.isdigit() or len(text) > MAX_COUNT_DIGITS:
        return None
    return int(text)


def _json_error(error: ValueError) -> str:
    """What was wrong with a body that is not JSON, without the parser's own words."""
    if isinstance(error, UnicodeDecodeError):
        return "the body is not UTF-8"
    if isinstance(error, json.JSONDecodeError):
        return f"the body is not JSON (line {error.lineno}, column {error.colno})"
    return "the body is not JSON (a number in it is too long)"


def _body(request: IRequest, status: int, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return body


def _tags(header: str | bytes | None) -> set[str]:
    if header is None:
        return set()
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    return {tag.strip() for tag in text.split(",")}


def _prefers_text(accept: str | bytes | None) -> bool:
    if accept is None:
        return False
    text = accept.decode("latin-1") if isinstance(accept, bytes) else accept
    types = [part.split(";")[0].strip().lower() for part in text.split(",")]
    return "text/plain" in types and "application/json" not in types[: types.index("text/plain")]
