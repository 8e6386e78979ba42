"""Shared pytest fixtures: every module under tests/ can use these by name."""

import pytest

from tests.fixtures.broker import mosquitto  # noqa: F401  (a real Mosquitto on a free port; skips if not installed)


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    """Each test's line state (spool, archive) under its own tmp_path, never in the user's ~/.local/state."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg_state"))
    return tmp_path / "xdg_state" / "edge-inspector"
