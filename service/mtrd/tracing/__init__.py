"""Traces: the trace model, hop statistics, rounds of probes, the tracer (resolve, check,
run), trace jobs, the store and the live events of each trace.

It builds on the engine and knows nothing of HTTP or JSON.
"""
