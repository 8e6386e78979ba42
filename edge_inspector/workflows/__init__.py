"""The compile-time workflows as Python functions: ``train``, ``export``, ``evaluate``, ``calibrate``.

Each is one module with one public function taking typed arguments and returning a typed result; the CLI command of
the same name (``edge_inspector/cli/<command>.py``) only parses arguments, calls it and prints the result, so the
command line and the Python API cannot drift apart::

    from edge_inspector.workflows.train import train

    result = train("datasets/magnetic_tile", "models/tile", preset="haloae-lite", overrides=["train.epochs=5"])
    print(result.summary())

This package sits on top of the compile-time side (model, data -> training -> export -> quantization ->
workflows); importing it loads nothing heavy, each module imports torch.
"""
