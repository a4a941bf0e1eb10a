"""The one exception family of Durable.

Raised by the authoring API, the client and the executor; users catch these by name.
Messages name the bad value and what would have been accepted.
"""

from __future__ import annotations


class DurableError(Exception):
    """Root of every error Durable raises on purpose."""


class DefinitionError(DurableError):
    """A workflow definition is malformed (duplicate step names, unknown compensation, ...)."""


class WorkflowNotFound(DurableError):
    """No workflow of that name is registered."""


class RunNotFound(DurableError):
    """No run has that id."""


class RunNotActive(DurableError):
    """The run has already finished, so it cannot take events, inputs or cancellation."""


class UnknownQueue(DurableError):
    """The queue is not served or declared anywhere."""


class InvalidInput(DurableError, ValueError):
    """A value is not JSON-serialisable, too large, or otherwise refused; nothing was stored."""


class ContextTooLarge(InvalidInput):
    """A context or input exceeds the configured size limit."""


class InvalidSchedule(DurableError, ValueError):
    """A cron expression or time zone is malformed."""


class NonRetryableError(DurableError):
    """Raise (or subclass) from a step to fail it at once, skipping the remaining attempts."""


class WaitTimeout(DurableError):
    """A wait without ``timeout_value`` reached its timeout."""


class StepTimeout(DurableError):
    """A step attempt ran longer than its ``timeout``."""


class ChildWorkflowFailed(DurableError):
    """A child workflow started with ``wait=True`` did not succeed."""


class RunTimeout(DurableError):
    """``Client.wait`` gave up before the run finished."""
