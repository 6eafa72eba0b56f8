"""Domain errors: what went wrong, in the service's own terms, with no gRPC in sight.

Services raise these; `taskservice.calls.errors` is the one place that turns each kind into a
status code with rich details, which each edge (gRPC, HTTP) sends its own way. Each error carries
a stable UPPER_SNAKE `reason` that clients may switch on (AIP-193's ErrorInfo.reason) and a
message safe to show to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


class DomainError(Exception):
    """Base of every error a caller is meant to see."""

    def __init__(self, reason: str, message: str, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        #: Machine-readable facts for the client (ErrorInfo.metadata), e.g. `oldest_revision`.
        self.metadata = metadata or {}


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (`task.title`) and what is wrong with it."""

    field: str
    description: str


class InvalidArgument(DomainError):
    """The request itself is wrong; it carries every offending field, not just the first."""

    def __init__(self, violations: list[FieldViolation], reason: str = "INVALID_ARGUMENT") -> None:
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(reason, message)
        self.violations = violations

    @classmethod
    def field(
        cls, field: str, description: str, reason: str = "INVALID_ARGUMENT"
    ) -> InvalidArgument:
        """The common case of a single bad field."""
        return cls([FieldViolation(field, description)], reason)


class Unauthenticated(DomainError):
    """The caller's credentials are missing, wrong, expired or revoked."""


class PermissionDenied(DomainError):
    """The caller is known but may not do this."""


class NotFound(DomainError):
    """The resource does not exist, or the caller may not know that it does."""


class AlreadyExists(DomainError):
    """A unique value (an email) is taken."""


class FailedPrecondition(DomainError):
    """The request is valid but the current state forbids it (an admin demoting themself)."""


class Aborted(DomainError):
    """A concurrency conflict (a stale etag): re-read and retry."""


class Unavailable(DomainError):
    """A dependency (the database) cannot be reached; the call may be retried."""


class OutOfRange(DomainError):
    """A value is valid in itself but beyond what exists yet (a revision not reached yet)."""


class ResourceExhausted(DomainError):
    """Too many attempts, or a quota reached; `retry_after` says when trying again may work."""

    def __init__(self, reason: str, message: str, retry_after: timedelta | None = None) -> None:
        super().__init__(reason, message)
        self.retry_after = retry_after
