"""Monitors: traces re-run on a schedule, their path followed over time, alerts on it.

This room sits above ``mtrd.tracing`` (a monitor's run is an ordinary trace) and below
``mtrd.web`` (which parses, renders and serves monitors): it knows nothing of HTTP or JSON.
"""
