"""Test package (so tests can import shared fixtures as tests.fixtures.*)."""
