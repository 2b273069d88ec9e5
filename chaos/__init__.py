"""Fault drills: Chaos Toolkit experiments run under constant load, with checkers.

``make chaos`` (``python -m chaos.run``): each drill in ``drills/`` is a Chaos Toolkit
experiment whose probes and actions are this package's functions (``probes``,
``actions``); ``run`` drives them under load (or, ``--mode random``, a seeded plan of
them from ``schedule``), ``checker`` judges the recorded history, ``report`` writes the
journals, ``summary.md`` and ``timeline.png``. The faults beyond processes and nodes:
``netfault`` (a TCP fault proxy: latency, resets, a blackhole) and ``links`` (it between
the Keepers and the DB, and between the load and the proxies), ``clock`` (a Keeper's
wall clock under libfaketime) and ``cpuhog`` (CPU starvation).
"""
