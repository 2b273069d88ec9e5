"""Lowest layer: time, task supervision and logging helpers with no project imports above."""
