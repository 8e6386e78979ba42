"""The line: region of interest, decision, overlay, the threaded loop, and ``line.build_line``, the composition root
that wires source, engine, loop, sinks and the MQTT command handler from one configuration."""
