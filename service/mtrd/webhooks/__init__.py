"""Webhooks: events delivered over HTTP, signed as Standard Webhooks say.

An HTTP client room of its own (treq): the monitors talk to it through their
``Notifier`` interface, and the composition root wires it.
"""
