"""LayerWatch monitor: the service, policy, controller, demo, replay and the command line."""

__version__ = "0.1.0"
