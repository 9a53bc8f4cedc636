"""A trace as a Graphviz DOT graph (``Accept: text/vnd.graphviz``).

One node per responder and TTL (an address seen at two TTLs, as on branches of
different lengths, is two nodes), labelled ``name (address)``, its AS when known,
and its TTL; a multipath trace draws the links its flows
showed, a classic trace links every responder of a TTL to every one of the next
(dashed: nothing says which leads where). Silent TTLs show as one ``*`` node.
"""

from __future__ import annotations

import itertools

from mtrd.tracing.model import Responder, Trace

_SOURCE = "source"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(text: str) -> str:
    """``text`` as plain text inside a quoted DOT label.

    Names and AS names are untrusted, and a label reads a backslash and a letter as an
    escape (a line break, the node's name...), so every backslash and quote is escaped
    and anything not printable dropped.
    """
    plain = "".join(c for c in text if c.isprintable())
    return plain.replace("\\", "\\\\").replace('"', '\\"')


def _label(ttl: int, responder: Responder | None) -> str:
    """A node's label: ``name (address)``, the AS when known, the TTL; one per line."""
    if responder is None:
        return f'"*\\nTTL {ttl}"'
    lines = [responder.address]
    annotation = responder.annotation
    if annotation is not None:
        if annotation.hostname is not None:
            lines[0] = f"{annotation.hostname} ({responder.address})"
        if annotation.asn is not None:
            lines.append(" ".join(filter(None, (f"AS{annotation.asn}", annotation.as_name))))
    lines.append(f"TTL {ttl}")
    return '"' + "\\n".join(_text(line) for line in lines) + '"'


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
        if not hop.responders:
            lines.append(f"  {_node(hop.ttl, '*')} [label={_label(hop.ttl, None)}];")
        for responder in hop.responders:
            node = _node(hop.ttl, responder.address)
            lines.append(f"  {node} [label={_label(hop.ttl, responder)}];")
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
