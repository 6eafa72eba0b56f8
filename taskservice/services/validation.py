"""Input rules shared by services: emails, passwords, ids. Each limit is a named constant."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from email_validator import EmailNotValidError, validate_email

from taskservice.db.models import EMAIL_MAX_LENGTH
from taskservice.errors import FieldViolation, InvalidArgument
from taskservice.security.passwords import BCRYPT_MAX_PASSWORD_BYTES

_T = TypeVar("_T")

#: Shortest password accepted when one is set, in characters.
PASSWORD_MIN_CHARS = 8


def normalize_email(raw: str) -> str:
    """Validate an address (syntax only, no DNS) and return it trimmed and lower-cased.

    Raises ValueError with a description for the caller.
    """
    candidate = raw.strip()
    if not candidate:
        raise ValueError("required")
    if len(candidate) > EMAIL_MAX_LENGTH:
        raise ValueError(f"at most {EMAIL_MAX_LENGTH} characters")
    try:
        normalized = validate_email(candidate, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return normalized.lower()


def new_password_violation(field: str, password: str) -> FieldViolation | None:
    """Why `password` cannot be set, or None (Register, ChangePassword and create-admin).

    Over 72 bytes is refused, never truncated. A NUL is refused because bcrypt's key is the
    password, a NUL, and the password again up to 72 bytes: abc NUL abc NUL abc would hash like
    plain abc, so a long-looking password would be as weak as its first part.
    """
    if "\x00" in password:
        return FieldViolation(field, "must not contain NUL (U+0000)")
    if len(password) < PASSWORD_MIN_CHARS:
        return FieldViolation(field, f"at least {PASSWORD_MIN_CHARS} characters")
    if len(password.encode()) > BCRYPT_MAX_PASSWORD_BYTES:
        return FieldViolation(field, f"at most {BCRYPT_MAX_PASSWORD_BYTES} bytes in UTF-8")
    return None


def email_violation(field: str, raw: str) -> tuple[str, FieldViolation | None]:
    """Normalise an email, or say why it is not valid (and return "")."""
    try:
        return normalize_email(raw), None
    except ValueError as exc:
        return "", FieldViolation(field, str(exc))


#: Most characters of violation text one refusal carries, and of any one description. gRPC
#: clients refuse response metadata over 8 KiB by default, and a refusal carries its text twice
#: (grpc-message, and base64 in grpc-status-details-bin): a longer list would reach the client
#: as RESOURCE_EXHAUSTED "Stream removed" instead of INVALID_ARGUMENT.
MAX_VIOLATIONS_TEXT = 1500
MAX_DESCRIPTION_LENGTH = 300


def bounded(violations: list[FieldViolation]) -> list[FieldViolation]:
    """The violations one refusal can carry.

    Long descriptions are clipped; past the text budget, one last entry on the next bad field
    says how many more were not listed.
    """
    kept: list[FieldViolation] = []
    used = 0
    for index, violation in enumerate(violations):
        description = violation.description
        if len(description) > MAX_DESCRIPTION_LENGTH:
            description = description[: MAX_DESCRIPTION_LENGTH - 3] + "..."
        cost = len(violation.field) + len(description) + 4
        if kept and used + cost > MAX_VIOLATIONS_TEXT:
            more = len(violations) - index
            kept.append(FieldViolation(violation.field, f"... and {more} more (not listed)"))
            break
        kept.append(FieldViolation(violation.field, description))
        used += cost
    return kept


def raise_if(*violations: FieldViolation | None) -> None:
    """Raise one InvalidArgument listing every violation given (as many as fit), if any."""
    found = [v for v in violations if v is not None]
    if found:
        raise InvalidArgument(bounded(found))


def require_id(field: str, value: int) -> None:
    """Ids are positive; 0 is what an unset proto field reads as."""
    raise_if(id_violation(field, value))


def id_violation(field: str, value: int) -> FieldViolation | None:
    """Why `value` is not an id, or None; for requests with other fields to check too."""
    return FieldViolation(field, "must be a positive id") if value <= 0 else None


class Violations:
    """Collects everything wrong with one request, to refuse it once, naming every bad field.

    Checks that raise InvalidArgument themselves (a filter's parser, say) run through `check`;
    the first specific reason among them (FILTER_INVALID) is the reason of the whole refusal.
    """

    def __init__(self) -> None:
        self._found: list[FieldViolation] = []
        self._reasons: list[str] = []

    def add(self, *violations: FieldViolation | None) -> None:
        """Record violations found by hand (None means "nothing wrong")."""
        self._found.extend(v for v in violations if v is not None)

    def check(self, run: Callable[[], _T]) -> _T | None:
        """Run a check that raises InvalidArgument; return its result, or None if it raised."""
        try:
            return run()
        except InvalidArgument as error:
            self._found.extend(error.violations)
            self._reasons.append(error.reason)
            return None

    @property
    def found(self) -> bool:
        """Whether anything is wrong so far."""
        return bool(self._found)

    def error(self) -> InvalidArgument:
        """The refusal naming everything recorded (only meaningful when `found`)."""
        specific = [reason for reason in self._reasons if reason != "INVALID_ARGUMENT"]
        return InvalidArgument(bounded(self._found), *specific[:1])

    def raise_if_any(self) -> None:
        """Refuse the request with everything recorded, if anything was."""
        if self._found:
            raise self.error()


def mask_violations(
    paths: frozenset[str], writable: frozenset[str], read_only: frozenset[str], resource: str
) -> list[FieldViolation]:
    """What is wrong with an update mask: empty, or naming read-only or unknown fields."""
    if not paths:
        return [FieldViolation("update_mask", "must name at least one field")]
    allowed = ", ".join(sorted(writable))
    return [
        FieldViolation(
            "update_mask",
            f"path {path!r} "
            + ("is read-only" if path in read_only else f"is not a field of {resource}")
            + f"; allowed: {allowed}",
        )
        for path in sorted(paths - writable)
    ]


def nul_violation(field: str, value: str) -> FieldViolation | None:
    """U+0000 is refused in stored text: PostgreSQL cannot store it, SQLite would."""
    return FieldViolation(field, "must not contain NUL (U+0000)") if "\x00" in value else None
