"""edge-inspector: industrial visual inspection at the edge."""

__version__ = "0.1.0"
