"""HaloAE model (compile time, needs torch): backbones, local attention, the auto-encoder and its presets.

Import the submodules directly (``edge_inspector.model.haloae``); importing this package loads nothing heavy.
"""
