"""Benchmarks of the data plane (``make bench``): ``grpc_vs_serve`` against Ray Serve's
gRPC proxy, ``dataplane_layers`` one layer at a time, both on ``harness``.

A package so the import contracts (pyproject ``[tool.importlinter]``) can see it: the
benchmarks stand outside the platform, and nothing in ``ha_serving``, ``infra``, ``chaos``
or ``loadtest`` imports them. The scripts still run as ``python bench/<name>.py``.
"""
