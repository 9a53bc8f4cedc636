"""Shared test set-up: the lab fixtures and a check for unhandled errors in Deferreds."""

pytest_plugins = ["pytester", "tests.deferreds", "tests.lab.fixtures", "tests.redis_server"]
