"""All Ray calls of the control plane go through one typed adapter, ``Runtime``.

``RayRuntime`` is the real one; ``ha_serving.testing.FakeRuntime`` hosts the same actor
classes in-process for unit tests, type-checked against the same Protocol.
"""

from ha_serving.runtime._protocol import ActorSpec, ActorUnavailable, Runtime

__all__ = ["ActorSpec", "ActorUnavailable", "Runtime"]
