"""LayerWatch printer I/O: MQTT layer trigger, camera node, printer backends (issue 3 builds it)."""
