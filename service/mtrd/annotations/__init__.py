"""Who the hops are: reverse DNS names and autonomous systems of responder addresses.

This room knows nothing of traces, HTTP or JSON: the tracing room asks it about
addresses and puts what it learns into the hops.
"""
