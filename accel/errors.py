"""Errors a user can act on: every message names the input and what was expected."""


class UserInputError(ValueError):
    """Bad input (file, setting, shape); raised before any GPU work where possible."""


class JobCancelled(RuntimeError):
    """The host asked the job to stop; raised between denoising steps."""


class WorkerGroupError(RuntimeError):
    """A worker died, timed out or reported an error; the group has been torn down."""
