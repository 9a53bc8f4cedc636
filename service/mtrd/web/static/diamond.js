// The multipath view: the diamond as inline SVG (a column of responders per TTL, a line per
// link learned from flows) and a table of the flows. Built with DOM calls; names and
// addresses go in as SVG text nodes.

import { ms, pct } from "./format.js";
import { element } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const COLUMN = 150; // room for an IPv4 address under each node
const ROW = 44;
const PAD = { left: 70, right: 70, top: 28, bottom: 24 };

function node(parent, name, attributes, text) {
  const made = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) made.setAttribute(key, String(value));
  if (text !== undefined) made.textContent = text;
  parent.appendChild(made);
  return made;
}

/** Where each responder and link goes: responders in a column per TTL (centred on the
 *  tallest column), links from one column to the next. A link's end that no hop
 *  lists still gets a node, so no line hangs loose. Pure: numbers only, no DOM. */
export function layoutDiamond(hops, links) {
  const columns = new Map();
  const add = (ttl, address, name) => {
    if (!columns.has(ttl)) columns.set(ttl, new Map());
    const column = columns.get(ttl);
    if (!column.has(address)) column.set(address, name || "");
  };
  for (const hop of hops) {
    for (const responder of hop.responders) add(hop.ttl, responder.address, responder.hostname);
  }
  for (const link of links) {
    add(link.ttl, link.from);
    add(link.ttl + 1, link.to);
  }
  const ttls = [...columns.keys()].sort((a, b) => a - b);
  const tallest = Math.max(1, ...[...columns.values()].map((c) => c.size));
  const width = PAD.left + PAD.right + COLUMN * Math.max(ttls.length - 1, 0);
  const height = PAD.top + PAD.bottom + ROW * tallest;
  const nodes = [];
  const at = new Map();
  // Each column is ordered by the mean row of the responders leading to it (a barycentre
  // sort), so a diamond's lines cross only where the flows really do.
  const rowOf = new Map();
  ttls.forEach((ttl, i) => {
    const column = [...columns.get(ttl)];
    const before = (address) => {
      const rows = links.filter((l) => l.ttl === ttl - 1 && l.to === address)
        .map((l) => rowOf.get(`${ttl - 1} ${l.from}`)).filter((r) => r !== undefined);
      return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : Infinity;
    };
    const order = new Map(column.map(([address], j) => [address, [before(address), j]]));
    const rank = ([address]) => order.get(address);
    column.sort((a, b) => rank(a)[0] - rank(b)[0] || rank(a)[1] - rank(b)[1]);
    column.forEach(([address], j) => rowOf.set(`${ttl} ${address}`, j));
    const top = PAD.top + (ROW * (tallest - column.length)) / 2 + ROW / 2;
    column.forEach(([address, name], j) => {
      const placed = { ttl, address, name, x: PAD.left + COLUMN * i, y: top + ROW * j };
      nodes.push(placed);
      at.set(`${ttl} ${address}`, placed);
    });
  });
  const edges = links.map((link) => {
    const from = at.get(`${link.ttl} ${link.from}`);
    const to = at.get(`${link.ttl + 1} ${link.to}`);
    return { ttl: link.ttl, from: link.from, to: link.to, x1: from.x, y1: from.y, x2: to.x,
      y2: to.y };
  });
  return { width, height, ttls, nodes, edges };
}

/** Draw a multipath trace's diamond into the svg element, replacing what was there. */
export function drawDiamond(svg, hops, links) {
  const layout = layoutDiamond(hops, links);
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${layout.width} ${layout.height}`);
  // Wide paths scroll sideways rather than shrink their labels out of reach.
  svg.setAttribute("width", String(layout.width));
  const lines = node(svg, "g", { class: "links" });
  for (const edge of layout.edges) {
    node(lines, "line", { x1: edge.x1, y1: edge.y1, x2: edge.x2, y2: edge.y2,
      "data-ttl": edge.ttl });
  }
  layout.ttls.forEach((ttl, i) => {
    node(svg, "text", { class: "ttl", x: PAD.left + COLUMN * i, y: 14, "text-anchor": "middle" },
      `TTL ${ttl}`);
  });
  for (const placed of layout.nodes) {
    const group = node(svg, "g", { class: "responder", "data-ttl": placed.ttl });
    node(group, "title", {}, placed.name ? `${placed.name} (${placed.address})` : placed.address);
    node(group, "circle", { cx: placed.x, cy: placed.y, r: 5 });
    node(group, "text", { class: "address", x: placed.x, y: placed.y + 17,
      "text-anchor": "middle" }, placed.name || placed.address);
  }
}

/** A flow's round-trip time: at the farthest TTL that answered it, or null. */
export function flowRtt(flow) {
  const answered = flow.hops.filter((hop) => typeof hop.rtt_ms === "number");
  return answered.length ? answered[answered.length - 1].rtt_ms : null;
}

/** Fill the flows table: one row per flow with its source port, loss and RTT. */
export function flowRows(body, flows) {
  body.replaceChildren(...flows.map((flow) => {
    const row = element("tr");
    row.dataset.flow = flow.flow;
    row.append(element("th", String(flow.flow)));
    row.lastChild.scope = "row";
    row.append(element("td", String(flow.local_port), "num"),
      element("td", String(flow.sent), "num"), element("td", pct(flow.loss_pct), "num"),
      element("td", ms(flowRtt(flow)), "num"));
    return row;
  }));
}
