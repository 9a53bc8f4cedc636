"""The HTTP edge: Klein routes, request intake, rendering (JSON and the text report),
server-sent events, problem details, auth, framing limits, the access log and metrics.

It parses, calls the tracing room and renders; it holds no trace logic of its own.
"""
