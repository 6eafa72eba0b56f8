"""Who is calling: the authenticated identity every service method receives explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field

from taskservice.errors import PermissionDenied
from taskservice.services.authorization import Permission, effective_permissions


@dataclass(frozen=True)
class Principal:
    """An authenticated caller, as of this call.

    `is_admin` is the user's current role, read fresh (or from an invalidated cache), never
    trusted from the token. What the caller may do is `permissions`: the role's, cut down to
    `scope` when the credential is an API key created with a list of permissions.
    """

    user_id: int
    is_admin: bool
    #: Authenticated by an API key rather than by an access token from a login.
    via_api_key: bool = False
    #: Authenticated by a client certificate mapped in MTLS_IDENTITIES (service accounts only).
    via_certificate: bool = False
    #: The permissions the credential was limited to; None: the role's, all of them.
    scope: frozenset[Permission] | None = None
    #: A service account's permissions, standing in for a role; None for people.
    granted: frozenset[Permission] | None = None
    #: What the caller may do now (derived from the fields above).
    permissions: frozenset[Permission] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once per call: every check of the call reads it.
        object.__setattr__(
            self, "permissions", effective_permissions(self.is_admin, self.scope, self.granted)
        )

    @property
    def is_service_account(self) -> bool:
        """Whether the caller is a service account (no password, API keys only)."""
        return self.granted is not None

    def require_login_credential(self) -> None:
        """Refuse the call when it is authenticated by an API key (key management, say).

        A client certificate is no login either: it is refused alike.
        """
        if self.via_api_key or self.via_certificate:
            raise PermissionDenied(
                "API_KEY_NOT_ALLOWED", "this method needs an access token from a login, not a key"
            )
