"""Benchmarks of mtrd in the network-namespace lab: ``python -m bench --mode full|small``.

Each figure has its own module (engine, e2e, latency, sse, memory, http); ``__main__``
builds one lab, runs them in turn, tears the lab down and writes ``bench/results/``.
"""
