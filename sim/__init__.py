"""Control-plane scale simulation (issue #16): the real Keeper (leadership, reconciler,
link and discovery endpoints) against a real MariaDB, N simulated clusters whose
AppMasters are the real ``AppMasterCore`` over a timed ``FakeRuntime``, and clients as
discovery watchers. Run with ``python -m sim`` (``make scale-sim``); see docs/scale.md.

Nothing in the platform imports this package (an import-linter contract says so).
"""
