"""The line: region of interest, decision, overlay and the threaded loop that wires capture, engine and sinks."""
