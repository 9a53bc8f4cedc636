"""Shared test set-up: the lab fixtures and a check for unhandled errors in Deferreds."""

import os

pytest_plugins = ["pytester", "tests.deferreds", "tests.lab.fixtures", "tests.redis_server"]

# Every ``mtrd serve`` a test starts inherits this: responders' names are looked up only by
# a test that brings its own DNS server and asks for them (``--reverse-dns on``), never
# through the host's resolver (tests talk to loopback and the lab only).
os.environ.setdefault("MTRD_REVERSE_DNS", "off")
