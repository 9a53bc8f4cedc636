"""A trace as a Graphviz DOT graph (``Accept: text/vnd.graphviz``).

One node per responder and TTL (an address seen at two TTLs, as on branches of
different lengths, is two nodes); a multipath trace draws the links its flows
showed, a classic trace links every responder of a TTL to every one of the next
(dashed: nothing says which leads where). Silent TTLs show as one ``*`` node.
"""

from __future__ import annotations

import itertools

from mtrd.tracing.model import Trace

_SOURCE = "source"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _node(ttl: int, address: str) -> str:
    return _quote(f"{ttl} {address}")


def render_dot(trace: Trace) -> str:
    """The trace's path graph in DOT, ending with a newline."""
    lines = [
        f"digraph {_quote('trace ' + trace.id)} {{",
        "  rankdir=LR;",
        "  node [shape=box, fontname=monospace];",
        f"  {_quote(_SOURCE)} [label={_quote(trace.source or 'source')}];",
    ]
    layers: list[tuple[int, list[str]]] = []
    for hop in trace.hops:
        addresses = [r.address for r in hop.responders] or ["*"]
        layers.append((hop.ttl, addresses))
        for address in addresses:
            label = f"{address}\\nTTL {hop.ttl}"
            lines.append(f"  {_node(hop.ttl, address)} [label={_quote(label)}];")
    if layers:
        first_ttl, first = layers[0]
        lines.extend(f"  {_quote(_SOURCE)} -> {_node(first_ttl, a)};" for a in first)
    if trace.multipath is not None:
        known = {(ttl, a) for ttl, addresses in layers for a in addresses}
        lines.extend(
            f"  {_node(link.ttl, link.source)} -> {_node(link.ttl + 1, link.to)};"
            for link in trace.multipath.links
            if (link.ttl, link.source) in known and (link.ttl + 1, link.to) in known
        )
    else:
        for (ttl, here), (next_ttl, after) in itertools.pairwise(layers):
            lines.extend(
                f"  {_node(ttl, a)} -> {_node(next_ttl, b)} [style=dashed];"
                for a in here
                for b in after
            )
    lines.append("}")
    return "\n".join(lines) + "\n"
