"""AuthService over gRPC: Register, Login, ChangePassword, RefreshToken, Logout."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from taskservice.api.authentication import authenticated, optionally_authenticated
from taskservice.api.convert import token_fields, user_to_proto
from taskservice.api.peer import caller_address
from taskservice.config import IPNetwork
from taskservice.services.auth import AuthService
from taskservice.services.principal import Principal
from taskservice.v1 import auth_service_pb2 as pb
from taskservice.v1 import auth_service_pb2_grpc


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    """Adapts AuthService requests to the auth service."""

    def __init__(self, auth: AuthService, trusted_proxies: Sequence[IPNetwork] = ()) -> None:
        self._auth = auth
        self._trusted = tuple(trusted_proxies)

    @optionally_authenticated
    async def Register(
        self,
        request: pb.RegisterRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal | None,
    ) -> pb.RegisterResponse:
        """Create a user (an admin only with an admin's token)."""
        signed_in = await self._auth.register(
            principal,
            request.email,
            request.password,
            request.is_admin,
            caller_address(context, self._trusted),
        )
        return pb.RegisterResponse(
            user=user_to_proto(signed_in.user),
            refresh_token=signed_in.refresh_token,
            **token_fields(signed_in.token),
        )

    async def Login(
        self, request: pb.LoginRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoginResponse:
        """Exchange credentials for an access token and a refresh token."""
        signed_in = await self._auth.login(
            request.email, request.password, caller_address(context, self._trusted)
        )
        return pb.LoginResponse(
            user=user_to_proto(signed_in.user),
            refresh_token=signed_in.refresh_token,
            **token_fields(signed_in.token),
        )

    @authenticated
    async def ChangePassword(
        self,
        request: pb.ChangePasswordRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.ChangePasswordResponse:
        """Change the caller's password, revoking older tokens."""
        token = await self._auth.change_password(
            principal, request.current_password, request.new_password
        )
        return pb.ChangePasswordResponse(**token_fields(token))

    async def RefreshToken(
        self, request: pb.RefreshTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.RefreshTokenResponse:
        """Rotate a refresh token."""
        refreshed = await self._auth.refresh(request.refresh_token)
        return pb.RefreshTokenResponse(
            refresh_token=refreshed.refresh_token, **token_fields(refreshed.token)
        )

    async def Logout(
        self, request: pb.LogoutRequest, context: grpc.aio.ServicerContext
    ) -> pb.LogoutResponse:
        """Revoke a refresh token's family."""
        await self._auth.logout(request.refresh_token)
        return pb.LogoutResponse()
