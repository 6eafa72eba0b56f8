"""Who is calling: the authenticated identity every service method receives explicitly."""

from __future__ import annotations

from dataclasses import dataclass

from taskservice.errors import PermissionDenied


@dataclass(frozen=True)
class Principal:
    """An authenticated caller, as of this call.

    `is_admin` is the user's current role, read fresh (or from an invalidated cache), never
    trusted from the token.
    """

    user_id: int
    is_admin: bool
    #: Authenticated by an API key rather than by an access token from a login.
    via_api_key: bool = False

    def require_admin(self) -> None:
        """Refuse the call unless the caller is an admin."""
        if not self.is_admin:
            raise PermissionDenied("ADMIN_REQUIRED", "this method is for administrators only")

    def require_login_credential(self) -> None:
        """Refuse the call when it is authenticated by an API key (key management, say)."""
        if self.via_api_key:
            raise PermissionDenied(
                "API_KEY_NOT_ALLOWED", "this method needs an access token from a login, not a key"
            )
