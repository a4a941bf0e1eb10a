"""The Durable Kubernetes operator (Kopf): WorkflowRun and WorkflowSchedule resources on top of ``durable``.

Started by the ``durable-operator`` console script (:mod:`durable_operator.main`). Nothing here is a
public Python API; the public surface is the CRDs in ``crds/`` and the command line.
"""

__all__: list[str] = []
