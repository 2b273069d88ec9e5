"""Fault drills: Chaos Toolkit experiments run under constant load, with checkers.

``make chaos`` (``python -m chaos.run``): each drill in ``drills/`` is a Chaos Toolkit
experiment whose probes and actions are this package's functions (``probes``,
``actions``); ``run`` drives them under load, ``checker`` judges the recorded history,
``report`` writes the journals, ``summary.md`` and ``timeline.png``.
"""
