"""The ``ha-serving`` command line."""

from ha_serving.cli._app import app, main

__all__ = ["app", "main"]
