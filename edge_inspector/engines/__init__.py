"""Run-time engines: ONNX Runtime (and TensorRT where present) behind one interface."""
