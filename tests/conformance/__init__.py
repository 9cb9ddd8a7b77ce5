"""The conformance suite: every store in tests/conftest.py:STORES must pass all of it."""
