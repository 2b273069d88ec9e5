"""The gRPC protocols: ``serving.proto`` (the data plane: client -> proxy) and
``keeper.proto`` (the control plane: CLI/SDK/AppMaster -> Keeper), with their generated
stubs (``make proto``; never edit the ``*_pb2*`` files by hand).

A regular package, not a namespace one, so the import contracts see it: only the
modules that speak gRPC import it (pyproject ``[tool.importlinter]``); everything else
works with the typed values of ``ha_serving._wire`` and the roles' own APIs.
"""
