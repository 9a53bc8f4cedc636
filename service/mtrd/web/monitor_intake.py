"""Reading a monitor from decoded JSON: its own fields, and a trace request's.

``POST /monitors`` takes a whole monitor; ``PATCH`` takes any of its fields, merged
over the monitor as it is and read again whole, so both go through the same checks.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from mtrd.monitors.model import (
    DEFAULT_CONFIRM_RUNS,
    DEFAULT_EVERY,
    MIN_EVERY,
    Alerts,
    MonitorSpec,
    WebhookTarget,
)
from mtrd.tracing.model import TraceMode
from mtrd.web.intake import InvalidFields, parse_submission
from mtrd.web.render import request_json
from mtrd.webhooks.signing import BadSecret, secret_key

MAX_EVERY = 86_400.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_MONITOR_FIELDS = {"name", "every", "jitter", "alerts", "webhook", "paused", "confirm_runs"}
_ALERT_FIELDS = {"loss_pct", "rtt_ms", "unreachable", "path_change"}
_WEBHOOK_FIELDS = {"url", "secret", "every_run"}
MAX_URL = 2048


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_webhook(value: object, field: str, errors: list[tuple[str, str]]) -> WebhookTarget | None:
    """A webhook object (``url``, ``secret``, ``every_run``), or None after an error."""
    if not isinstance(value, dict):
        errors.append((field, "must be an object with url and secret"))
        return None
    errors += [(f"{field}.{k}", "unknown field") for k in value if k not in _WEBHOOK_FIELDS]
    url, secret, every_run = value.get("url"), value.get("secret"), value.get("every_run", False)
    ok = True
    if not isinstance(url, str) or len(url) > MAX_URL:
        errors.append((f"{field}.url", f"must be an http or https URL of at most {MAX_URL} chars"))
        ok = False
    else:
        try:
            parts = urlsplit(url)
            port = parts.port  # raises on a bad port
        except ValueError:
            parts, port = None, None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            errors.append((f"{field}.url", "must be an http or https URL with a host"))
            ok = False
        elif parts.username or parts.password or (port is not None and port == 0):
            errors.append((f"{field}.url", "must not carry credentials or port 0"))
            ok = False
    if not isinstance(secret, str):
        errors.append((f"{field}.secret", "must be a string: whsec_ and the base64 of a key"))
        ok = False
    else:
        try:
            secret_key(secret)
        except BadSecret as e:
            errors.append((f"{field}.secret", str(e)))
            ok = False
    if not isinstance(every_run, bool):
        errors.append((f"{field}.every_run", "must be a boolean"))
        ok = False
    if not ok:
        return None
    assert isinstance(url, str)
    assert isinstance(secret, str)
    return WebhookTarget(url, secret, every_run)


def _alerts(value: object, errors: list[tuple[str, str]]) -> Alerts:
    if not isinstance(value, dict):
        errors.append(("alerts", "must be an object"))
        return Alerts()
    errors += [(f"alerts.{k}", "unknown field") for k in value if k not in _ALERT_FIELDS]
    loss, rtt = value.get("loss_pct"), value.get("rtt_ms")
    if loss is not None and (not _number(loss) or not 0 <= loss <= 100):
        errors.append(("alerts.loss_pct", "must be a number between 0 and 100"))
        loss = None
    if rtt is not None and (not _number(rtt) or not 0 < rtt <= 600_000):
        errors.append(("alerts.rtt_ms", "must be a positive number of milliseconds"))
        rtt = None
    flags = {}
    for name in ("unreachable", "path_change"):
        flag = value.get(name, False)
        if not isinstance(flag, bool):
            errors.append((f"alerts.{name}", "must be a boolean"))
            flag = False
        flags[name] = flag
    return Alerts(
        None if loss is None else float(loss), None if rtt is None else float(rtt), **flags
    )


def parse_monitor(body: object) -> MonitorSpec:
    """Read a whole monitor, or raise :class:`InvalidFields` naming every field at fault."""
    if not isinstance(body, dict):
        raise InvalidFields([("", "the body must be a JSON object")])
    errors: list[tuple[str, str]] = []
    trace_fields = {k: v for k, v in body.items() if k not in _MONITOR_FIELDS}
    submission = None
    try:
        submission = parse_submission(trace_fields)
    except InvalidFields as e:
        errors += e.errors
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        errors.append(("name", "must be 1 to 63 letters, digits, '.', '_' or '-'"))
    every = body.get("every", DEFAULT_EVERY)
    if not _number(every) or not MIN_EVERY <= every <= MAX_EVERY:
        errors.append(("every", f"must be a number of seconds from {MIN_EVERY:g} to {MAX_EVERY:g}"))
        every = DEFAULT_EVERY
    jitter = body.get("jitter")
    if jitter is not None and (not _number(jitter) or not 0 <= jitter <= MAX_EVERY):
        errors.append(("jitter", f"must be a number of seconds from 0 to {MAX_EVERY:g}"))
        jitter = None
    confirm = body.get("confirm_runs", DEFAULT_CONFIRM_RUNS)
    if isinstance(confirm, bool) or not isinstance(confirm, int) or not 1 <= confirm <= 10:
        errors.append(("confirm_runs", "must be an integer from 1 to 10"))
        confirm = DEFAULT_CONFIRM_RUNS
    paused = body.get("paused", False)
    if not isinstance(paused, bool):
        errors.append(("paused", "must be a boolean"))
    alerts = _alerts(body.get("alerts", {}), errors)
    webhook = (
        None if body.get("webhook") is None else parse_webhook(body["webhook"], "webhook", errors)
    )
    if errors or submission is None:
        raise InvalidFields(errors)
    assert isinstance(name, str)
    return MonitorSpec(
        name=name,
        request=submission.request,
        every=float(every),
        jitter=None if jitter is None else float(jitter),
        alerts=alerts,
        webhook=webhook,
        paused=bool(paused),
        vantage=submission.vantage,
        confirm_runs=confirm,
    )


def spec_fields(spec: MonitorSpec) -> dict[str, Any]:
    """A monitor's settings as the fields :func:`parse_monitor` reads (secret included)."""
    fields: dict[str, Any] = {k: v for k, v in request_json(spec.request).items() if v is not None}
    if spec.request.mode is TraceMode.CLASSIC:
        del fields["confidence"]  # a multipath setting, refused on classic traces
    if spec.vantage is not None:
        fields["vantage"] = spec.vantage
    fields |= {
        "name": spec.name,
        "every": spec.every,
        "confirm_runs": spec.confirm_runs,
        "paused": spec.paused,
        "alerts": {
            "loss_pct": spec.alerts.loss_pct,
            "rtt_ms": spec.alerts.rtt_ms,
            "unreachable": spec.alerts.unreachable,
            "path_change": spec.alerts.path_change,
        },
    }
    if spec.jitter is not None:
        fields["jitter"] = spec.jitter
    if spec.webhook is not None:
        fields["webhook"] = {
            "url": spec.webhook.url,
            "secret": spec.webhook.secret,
            "every_run": spec.webhook.every_run,
        }
    return fields


def parse_patch(current: MonitorSpec, body: object) -> MonitorSpec:
    """``current`` with the fields of a PATCH body replaced; null removes an optional one."""
    if not isinstance(body, dict):
        raise InvalidFields([("", "the body must be a JSON object")])
    fields = spec_fields(current)
    if "protocol" in body and "port" not in body:
        fields.pop("port", None)  # another protocol: its own default port
    for key, value in body.items():
        if value is None and key in ("webhook", "jitter", "port", "size", "tos", "ip_version"):
            fields.pop(key, None)
        elif key in ("alerts", "webhook") and isinstance(value, dict):
            # Objects merge: {"webhook": {"every_run": true}} keeps the URL and the secret.
            fields[key] = fields.get(key, {}) | value
        else:
            fields[key] = value
    return parse_monitor(fields)


def encode_spec(spec: MonitorSpec) -> bytes:
    """A monitor's settings as kept in Redis: the JSON ``parse_monitor`` reads back."""
    return json.dumps(spec_fields(spec), separators=(",", ":")).encode()


def decode_spec(raw: bytes) -> MonitorSpec:
    """The inverse of :func:`encode_spec`."""
    return parse_monitor(json.loads(raw))
