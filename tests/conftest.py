"""Shared pytest fixtures: every module under tests/ can use these by name."""

from tests.fixtures.broker import mosquitto  # noqa: F401  (a real Mosquitto on a free port; skips if not installed)
