"""The Serving Keeper: replicated control plane (leadership so far)."""

from ha_serving.keeper._leadership import LEASE_NAME, Leadership, NotLeader, Role, Term

__all__ = ["LEASE_NAME", "Leadership", "NotLeader", "Role", "Term"]
