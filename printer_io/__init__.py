"""LayerWatch printer I/O: the MQTT contract and link, layer triggers, the camera node, printer backends."""
