"""Publishing results: MQTT (``mqtt.py``, the only module that imports paho), the disk spool, the frame archive,
the JSON result schema and the command protocol. Import the module you need; nothing heavy loads here."""
