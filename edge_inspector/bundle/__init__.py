"""The model bundle: the one artifact that crosses from compile time to run time (stdlib, numpy, yaml, pydantic)."""

from edge_inspector.bundle.manifest import Manifest
from edge_inspector.bundle.store import Bundle, load_bundle, write_bundle

__all__ = ["Bundle", "Manifest", "load_bundle", "write_bundle"]
