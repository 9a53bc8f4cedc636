// Pure formatting of the trace JSON for the page: no DOM, so the tests can call it alone.

const DASH = "\u2013";

/** A time in milliseconds: one decimal (two below 1 ms, none from 1 s), or a dash. */
export function ms(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  if (value >= 1000) return value.toFixed(0);
  return value < 1 ? value.toFixed(2) : value.toFixed(1);
}

/** A loss percentage, e.g. "12.5%". */
export function pct(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  return `${value.toFixed(1)}%`;
}

/** How long between two RFC 3339 times, e.g. "4.2 s" or "2 min 5 s"; a dash without both. */
export function took(started, finished) {
  if (!started || !finished) return DASH;
  const seconds = (Date.parse(finished) - Date.parse(started)) / 1000;
  if (!Number.isFinite(seconds) || seconds < 0) return DASH;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

/** A responder's AS, e.g. "AS64500 EXAMPLE-NET"; empty when it is not known. */
export function asLabel(responder) {
  if (responder.asn === null || responder.asn === undefined) return "";
  return responder.as_name ? `AS${responder.asn} ${responder.as_name}` : `AS${responder.asn}`;
}

/** A responder's network: its AS and country, e.g. "AS64500 EXAMPLE-NET, NL"; empty if unknown. */
export function networkLabel(responder) {
  return [asLabel(responder), responder.country || ""].filter(Boolean).join(", ");
}

/** A responder's name and address for the host column: its name when it has one. */
export function hostLabel(responder) {
  const name = responder.hostname || "";
  return name && name !== responder.address ? { name, address: responder.address }
    : { name: "", address: responder.address };
}

/** The figures of one hop's row, as text, in the table's column order after Host and AS. */
export function hopFigures(hop) {
  const rtt = hop.rtt_ms || {};
  let loss = pct(hop.loss_pct);
  // Loss that does not carry on to the later hops is the router's own (rate-limited ICMP).
  const forward = hop.forward_loss_pct;
  if (typeof forward === "number" && forward < hop.loss_pct) loss += ` (fwd ${pct(forward)})`;
  return [loss, String(hop.sent), ms(rtt.last), ms(rtt.avg), ms(rtt.best), ms(rtt.worst),
    ms(rtt.stdev)];
}

const FINAL = new Set(["completed", "failed", "cancelled"]);

/** True once a trace's status can change no more. */
export function isFinal(status) {
  return FINAL.has(status);
}

/** What the page says of where the trace is: its status, with words beside any colour. */
export function statusText(status) {
  return {
    queued: "Queued", running: "Running\u2026", completed: "Completed",
    failed: "Failed", cancelled: "Cancelled",
  }[status] || String(status);
}

/** A local, readable date and time of an RFC 3339 time; a dash without one. */
export function when(time) {
  if (!time) return DASH;
  const date = new Date(time);
  return Number.isNaN(date.getTime()) ? DASH : date.toLocaleString();
}

/** Why a trace stopped, e.g. "destination" or "unreachable (net)"; a dash before it has. */
export function stopReason(reason, unreachableKind) {
  if (!reason) return DASH;
  return unreachableKind ? `${reason} (${unreachableKind})` : String(reason);
}

/** One TTL of a path change, e.g. "TTL 3: left 198.51.100.6; came 198.51.100.10". */
export function diffLine(change) {
  const parts = [];
  if (change.left && change.left.length) parts.push(`left ${change.left.join(", ")}`);
  if (change.came && change.came.length) parts.push(`came ${change.came.join(", ")}`);
  return `TTL ${change.ttl}: ${parts.join("; ") || "no change"}`;
}
