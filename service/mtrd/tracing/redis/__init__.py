"""Traces kept in Redis, shared by replicas: settings, the connection, the store and its codec.

Import the modules themselves (``mtrd.tracing.redis.settings`` and so on): settings are
read without loading the client library.
"""
