"""Frame sources for the line: cameras, streams, video files, image folders and the built-in demo line."""
