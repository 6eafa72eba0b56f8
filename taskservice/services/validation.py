"""Input rules shared by services: emails, passwords, ids. Each limit is a named constant."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

from taskservice.db.models import EMAIL_MAX_LENGTH
from taskservice.errors import FieldViolation, InvalidArgument
from taskservice.security.passwords import BCRYPT_MAX_PASSWORD_BYTES

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


def raise_if(*violations: FieldViolation | None) -> None:
    """Raise one InvalidArgument listing every violation given, if any."""
    found = [v for v in violations if v is not None]
    if found:
        raise InvalidArgument(found)


def require_id(field: str, value: int) -> None:
    """Ids are positive; 0 is what an unset proto field reads as."""
    if value <= 0:
        raise InvalidArgument.field(field, "must be a positive id")


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
