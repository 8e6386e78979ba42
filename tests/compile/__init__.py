"""Compile-time tests (torch)."""
