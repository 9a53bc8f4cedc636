// The view of one monitor at /ui/monitors/{id}: its current path, the path's changes with
// what changed at each TTL, the destination's RTT and loss over the last runs, and the runs.

import { ApiError, call, follow } from "./api.js";
import { drawRuns } from "./chart.js";
import { $, element, link, show } from "./dom.js";
import { diffLine, ms, pct, when } from "./format.js";

export class MonitorView {
  constructor(id) {
    this.path = `/monitors/${encodeURIComponent(id)}`;
    this.id = id;
    this.stream = new AbortController();
  }

  async open() {
    const monitor = await call("GET", this.path, { missing: true });
    if (monitor === null) {
      show(null);
      throw new ApiError(404, `Monitor ${this.id} does not exist.`);
    }
    show("monitor");
    this.render(monitor);
    // Each event (a run, a path change, an alert) changes the monitor: read it again.
    await follow(`${this.path}/events`, () => this.refresh(), this.stream.signal);
  }

  async refresh() {
    const monitor = await call("GET", this.path, { missing: true });
    if (monitor !== null) this.render(monitor);
  }

  render(monitor) {
    document.title = `mtrd: ${monitor.name}`;
    $("monitor-name").textContent = monitor.name;
    $("monitor-target").textContent = monitor.request.target;
    $("monitor-every").textContent = `${monitor.every} s`;
    $("monitor-state").textContent = monitor.paused ? "paused" : "running";
    $("monitor-path-id").textContent = monitor.path ? monitor.path.path_id : "\u2013";
    $("monitor-next").textContent = when(monitor.next_run_at);
    const alerts = monitor.alerts_open || [];
    $("monitor-alerts").hidden = alerts.length === 0;
    $("monitor-alerts").textContent = alerts.length
      ? `Open alerts: ${alerts.map((a) => `${a.alert} since ${when(a.since)}`).join("; ")}` : "";

    const hops = monitor.path ? monitor.path.hops : [];
    $("monitor-path").tBodies[0].replaceChildren(...hops.map((hop) => {
      const row = element("tr");
      row.dataset.ttl = hop.ttl;
      row.append(element("th", String(hop.ttl)),
        element("td", hop.responders === null ? "? (not heard)" : hop.responders.join(", ")
          || "(no reply)", "address"));
      return row;
    }));

    const changes = monitor.path_changes || [];
    $("monitor-changes").replaceChildren(...changes.map((entry) => {
      const item = element("li");
      item.append(element("div", `${when(entry.at)}: path ${entry.change.from_path_id} to `
        + `${entry.change.to_path_id}`));
      const lines = element("ul", undefined, "diff");
      lines.append(...entry.change.diff.map((change) => element("li", diffLine(change))));
      item.append(lines);
      return item;
    }));
    if (!changes.length) $("monitor-changes").append(element("li", "No change seen yet.", "none"));

    const runs = monitor.runs || [];  // newest first
    drawRuns($("runs-chart"), [...runs].reverse());
    $("monitor-runs").tBodies[0].replaceChildren(...runs.map((run) => {
      const row = element("tr");
      const trace = element("td");
      if (run.trace_id) trace.append(link(`/ui/traces/${encodeURIComponent(run.trace_id)}`, "trace"));
      row.append(element("td", when(run.finished_at || run.scheduled_at)),
        element("td", run.result || "\u2013"), element("td", pct(run.loss_pct), "num"),
        element("td", ms(run.rtt_ms), "num"), element("td", run.path_id || "\u2013"), trace);
      return row;
    }));
  }
}
