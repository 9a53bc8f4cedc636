// The page: a form that starts a trace, and the trace view at /ui/traces/{id} that follows
// the trace live. Every text from the network goes in with textContent, never as HTML.

import { ApiError, NeedsToken, call, follow, hasToken, setToken, text } from "./api.js";
import { drawChart } from "./chart.js";
import { drawDiamond, flowRows } from "./diamond.js";
import { $, element, link, show } from "./dom.js";
import { MonitorView } from "./monitors.js";
import {
  hopFigures, hostLabel, isFinal, networkLabel, statusText, stopReason, took, when,
} from "./format.js";

const DEFAULT_PORTS = { udp: 33434, tcp: 80 };

function notice(message) {
  $("notice").textContent = message;
  $("notice").hidden = !message;
}

/** Run a view; on a 401 ask for a token and run it again once there is one. */
async function guarded(view) {
  try {
    await view();
  } catch (error) {
    if (error instanceof NeedsToken) {
      show("auth");
      notice(hasToken() ? "That token was refused: enter another." : "This mtrd needs a token.");
      $("auth-form").onsubmit = (event) => {
        event.preventDefault();
        setToken($("token").value.trim());
        notice("");
        guarded(view);
      };
      $("token").focus();
    } else {
      notice(error instanceof ApiError ? error.message : `Something failed: ${error}`);
    }
  }
}

// -- the form --------------------------------------------------------------------------------

async function startView() {
  const points = await call("GET", "/vantage-points");
  show("start");
  const vantages = points.vantage_points.map((p) => p.name);
  $("vantage").replaceChildren(...vantages.map((name) => {
    const option = element("option", name);
    option.value = name;
    return option;
  }));
  $("vantage-field").hidden = vantages.length < 2;
  $("protocol").onchange = () => {
    const protocol = $("protocol").value;
    $("port").disabled = protocol === "icmp";
    $("port").value = protocol === "icmp" ? "" : DEFAULT_PORTS[protocol];
  };
  $("mode").onchange = () => {
    // Multipath holds a flow only with udp: picking it sets the protocol that can.
    const multipath = $("mode").value === "multipath";
    $("confidence").disabled = !multipath;
    $("probes").disabled = multipath;
    if (multipath && $("protocol").value !== "udp") {
      $("protocol").value = "udp";
      $("protocol").onchange();
    }
  };
  $("trace-form").onsubmit = (event) => {
    event.preventDefault();
    guarded(submit);
  };
  $("target").focus();
  await listMonitors();
}

async function submit() {
  const body = { target: $("target").value.trim(), protocol: $("protocol").value };
  if (body.protocol !== "icmp" && $("port").value) body.port = Number($("port").value);
  if ($("mode").value === "multipath") {
    body.mode = "multipath";
    body.confidence = Number($("confidence").value);
  } else if ($("probes").value) body.probes = Number($("probes").value);
  if (!$("vantage-field").hidden) body.vantage = $("vantage").value;
  $("submit").disabled = true;
  try {
    const trace = await call("POST", "/traces", { body });
    window.location.assign(`/ui/traces/${encodeURIComponent(trace.id)}`);
  } finally {
    $("submit").disabled = false;
  }
}

async function listMonitors() {
  // Monitors exist only on an mtrd that has them: without the route, nothing is shown.
  const answer = await call("GET", "/monitors", { missing: true }).catch(() => null);
  const monitors = answer && Array.isArray(answer.monitors) ? answer.monitors : [];
  $("monitors").hidden = monitors.length === 0;
  $("monitor-list").replaceChildren(...monitors.map((monitor) => {
    const item = element("li");
    item.append(link(`/ui/monitors/${encodeURIComponent(monitor.id)}`, monitor.name),
      ` ${monitor.request.target}, every ${monitor.every} s`);
    if (monitor.paused) item.append(" (paused)");
    return item;
  }));
}

// -- the trace view -------------------------------------------------------------------------

class TraceView {
  constructor(id) {
    this.id = id;
    this.path = `/traces/${encodeURIComponent(id)}`;
    this.hops = new Map();
    this.trace = null;
    this.stream = new AbortController();
    this.drawing = false;
  }

  async open() {
    const trace = await call("GET", this.path, { missing: true });
    if (trace === null) {
      show(null);
      notice(`Trace ${this.id} does not exist or has expired.`);
      return;
    }
    show("trace");
    this.wire();
    this.render(trace);
    if (!isFinal(trace.status)) {
      await follow(`${this.path}/events`, (kind, data) => this.event(kind, data),
        this.stream.signal);
    }
  }

  wire() {
    $("json-link").href = this.path;
    $("report-link").href = this.path;
    $("json-link").onclick = (event) => this.raw(event, "application/json");
    $("report-link").onclick = (event) => this.raw(event, "text/plain");
    $("cancel").onclick = () => guarded(async () => {
      $("cancel").disabled = true;
      const trace = await call("DELETE", this.path);
      if (trace) this.render(trace);
    });
  }

  raw(event, accept) {
    // Shown in the page, so the token goes along and the report is asked for as text.
    event.preventDefault();
    guarded(async () => {
      const body = await text(this.path, accept);
      $("raw").textContent = accept === "application/json"
        ? JSON.stringify(JSON.parse(body), null, 2) : body;
      $("raw").hidden = false;
      $("raw").focus();
    });
  }

  event(kind, data) {
    if (kind === "hop") {
      this.hops.set(data.ttl, data);
      this.row(data);
      this.chart();
    } else if (kind === "status") {
      this.status({ ...this.trace, status: data.status });
    } else if (kind === "done") {
      this.render(data);
    }
  }

  render(trace) {
    this.hops = new Map(trace.hops.map((hop) => [hop.ttl, hop]));
    $("hops").tBodies[0].replaceChildren();
    for (const hop of this.hops.values()) this.row(hop);
    this.status(trace);
    this.chart();
    this.multipath(trace.multipath);
  }

  multipath(result) {
    // Links and flows come with the finished trace; until then the hops table shows every
    // responder found so far.
    $("multipath").hidden = !result;
    if (!result) return;
    drawDiamond($("diamond"), [...this.hops.values()].sort((a, b) => a.ttl - b.ttl),
      result.links);
    flowRows($("flows").tBodies[0], result.flows);
  }

  status(trace) {
    this.trace = trace;
    document.title = `mtrd: ${trace.target.input}`;
    $("trace-target").textContent = trace.target.input;
    $("trace-status").textContent = statusText(trace.status);
    $("trace-status").dataset.status = trace.status;
    $("trace-stop").textContent = stopReason(trace.stop_reason, trace.unreachable_kind);
    $("trace-reached").textContent = !isFinal(trace.status) ? "\u2013"
      : trace.destination_reached ? "reached" : "not reached";
    $("trace-address").textContent = trace.target.address || "\u2013";
    $("trace-vantage").textContent = trace.vantage || "\u2013";
    $("trace-started").textContent = when(trace.started_at);
    $("trace-took").textContent = took(trace.started_at, trace.finished_at);
    $("trace-error").hidden = !trace.error;
    $("trace-error").textContent = trace.error ? trace.error.message : "";
    $("cancel").hidden = isFinal(trace.status);
    if (isFinal(trace.status)) this.stream.abort();
  }

  row(hop) {
    const row = element("tr");
    row.dataset.ttl = hop.ttl;
    row.append(element("th", String(hop.ttl)));
    row.lastChild.scope = "row";
    const host = element("td", undefined, "host");
    const as = element("td", undefined, "as");
    if (hop.responders.length === 0) host.append(element("span", "(no reply)", "none"));
    for (const responder of hop.responders) {
      const label = hostLabel(responder);
      const line = element("div");
      if (label.name) line.append(element("span", label.name, "name"), " ");
      line.append(element("span", label.address, "address"));
      host.append(line);
      const network = element("div", networkLabel(responder) || "\u2013");
      if (responder.prefix) network.title = responder.prefix;
      as.append(network);
    }
    if (hop.end) host.append(element("div", hop.end, "end"));
    if (hop.late) host.append(element("div", `${hop.late} late`, "late"));
    row.append(host, as);
    for (const figure of hopFigures(hop)) row.append(element("td", figure, "num"));
    if (hop.loss_pct > 0) row.classList.add("lossy");
    const body = $("hops").tBodies[0];
    const existing = body.querySelector(`tr[data-ttl="${Number(hop.ttl)}"]`);
    if (existing) {
      existing.replaceWith(row);
      return;
    }
    const after = [...body.rows].find((other) => Number(other.dataset.ttl) > hop.ttl);
    body.insertBefore(row, after || null);
  }

  chart() {
    // Hops can come many a second: draw once per frame at most.
    if (this.drawing) return;
    this.drawing = true;
    requestAnimationFrame(() => {
      this.drawing = false;
      drawChart($("chart"), [...this.hops.values()].sort((a, b) => a.ttl - b.ttl));
    });
  }
}

const traceMatch = window.location.pathname.match(/^\/ui\/traces\/([^/]+)$/);
const monitorMatch = window.location.pathname.match(/^\/ui\/monitors\/([^/]+)$/);
if (traceMatch) guarded(() => new TraceView(decodeURIComponent(traceMatch[1])).open());
else if (monitorMatch) guarded(() => new MonitorView(decodeURIComponent(monitorMatch[1])).open());
else guarded(startView);
