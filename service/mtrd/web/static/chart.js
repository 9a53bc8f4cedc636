// The RTT chart, inline SVG built with DOM calls: a bar from best to worst per hop, a dot at
// the average, and a cross with its percentage where the hop lost probes (shape and text, so
// colour is not the only sign).

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 640;
const HEIGHT = 240;
const PAD = { left: 48, right: 12, top: 24, bottom: 32 };

function node(parent, name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  parent.appendChild(element);
  return element;
}

/** A "nice" upper bound for the axis: 1, 2 or 5 times a power of ten, at least `value`. */
export function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((bound) => bound >= value);
}

/** Draw `hops` (the trace JSON's hops, by TTL) into the svg element, replacing what was there. */
export function drawChart(svg, hops) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const worst = Math.max(0, ...hops.map((h) => (h.rtt_ms && h.rtt_ms.worst) || 0));
  const top = niceCeiling(worst);
  const y = (v) => PAD.top + plotHeight * (1 - v / top);
  const step = plotWidth / Math.max(hops.length, 1);
  const x = (i) => PAD.left + step * (i + 0.5);

  const axes = node(svg, "g", { class: "axes" });
  node(axes, "line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: PAD.top + plotHeight });
  node(axes, "line", { x1: PAD.left, y1: y(0), x2: WIDTH - PAD.right, y2: y(0) });
  for (const tick of [0, top / 2, top]) {
    node(axes, "text", { x: PAD.left - 6, y: y(tick) + 4, "text-anchor": "end" }, `${tick}`);
  }
  node(axes, "text", { x: 4, y: 14 }, "ms");
  node(axes, "text", { x: WIDTH - PAD.right, y: HEIGHT - 4, "text-anchor": "end" }, "TTL");

  hops.forEach((hop, i) => {
    const group = node(svg, "g", { class: "hop", "data-ttl": hop.ttl });
    node(group, "text", { x: x(i), y: HEIGHT - PAD.bottom + 16, "text-anchor": "middle" },
      `${hop.ttl}`);
    const rtt = hop.rtt_ms || {};
    if (typeof rtt.best === "number" && typeof rtt.worst === "number") {
      node(group, "rect", { class: "range", x: x(i) - Math.min(8, step / 4), y: y(rtt.worst),
        width: Math.min(16, step / 2), height: Math.max(1, y(rtt.best) - y(rtt.worst)) });
      node(group, "circle", { class: "avg", cx: x(i), cy: y(rtt.avg), r: 3.5 });
    }
    if (hop.loss_pct > 0) {
      const mark = node(group, "g", { class: "loss" });
      const cy = PAD.top - 12;
      node(mark, "path", { d: `M${x(i) - 4} ${cy - 4}l8 8m0 -8l-8 8` });
      node(mark, "text", { x: x(i) + 6, y: cy + 4 }, `${Math.round(hop.loss_pct)}%`);
    }
  });
}

/** Draw a monitor's `runs` (oldest first): the destination's RTT as a line with dots, and a
 *  cross with its percentage where a run lost probes at the destination. */
export function drawRuns(svg, runs) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const top = niceCeiling(Math.max(0, ...runs.map((r) => r.rtt_ms || 0)));
  const y = (v) => PAD.top + plotHeight * (1 - v / top);
  const step = plotWidth / Math.max(runs.length, 1);
  const x = (i) => PAD.left + step * (i + 0.5);

  const axes = node(svg, "g", { class: "axes" });
  node(axes, "line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: y(0) });
  node(axes, "line", { x1: PAD.left, y1: y(0), x2: WIDTH - PAD.right, y2: y(0) });
  for (const tick of [0, top / 2, top]) {
    node(axes, "text", { x: PAD.left - 6, y: y(tick) + 4, "text-anchor": "end" }, `${tick}`);
  }
  node(axes, "text", { x: 4, y: 14 }, "ms");
  node(axes, "text", { x: WIDTH - PAD.right, y: HEIGHT - 4, "text-anchor": "end" },
    "runs, oldest to newest");

  // A run without an RTT (nothing came back) breaks the line.
  let points = [];
  const lines = [points];
  runs.forEach((run, i) => {
    if (typeof run.rtt_ms === "number") points.push(`${x(i)},${y(run.rtt_ms)}`);
    else lines.push((points = []));
  });
  for (const line of lines.filter((l) => l.length > 1)) {
    node(svg, "polyline", { class: "rtt", points: line.join(" ") });
  }
  runs.forEach((run, i) => {
    const group = node(svg, "g", { class: "run" });
    if (typeof run.rtt_ms === "number") {
      node(group, "circle", { class: "avg", cx: x(i), cy: y(run.rtt_ms), r: 3 });
    }
    if (run.loss_pct > 0) {
      const mark = node(group, "g", { class: "loss" });
      const cy = PAD.top - 12;
      node(mark, "path", { d: `M${x(i) - 4} ${cy - 4}l8 8m0 -8l-8 8` });
      node(mark, "text", { x: x(i) + 6, y: cy + 4 }, `${Math.round(run.loss_pct)}%`);
    }
  });
}
