"""Compile-time export: trained model -> model bundle (ONNX graph, manifest), parity checks; importing loads nothing heavy."""
