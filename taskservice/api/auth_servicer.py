"""AuthService over gRPC: Register, Login, ChangePassword."""

from __future__ import annotations

import grpc

from taskservice.api.authentication import authenticated, optionally_authenticated
from taskservice.api.convert import token_fields, user_to_proto
from taskservice.services.auth import AuthService
from taskservice.services.principal import Principal
from taskservice.v1 import auth_service_pb2 as pb
from taskservice.v1 import auth_service_pb2_grpc


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    """Adapts AuthService requests to the auth service."""

    def __init__(self, auth: AuthService) -> None:
        self._auth = auth

    @optionally_authenticated
    async def Register(
        self,
        request: pb.RegisterRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal | None,
    ) -> pb.RegisterResponse:
        """Create a user (an admin only with an admin's token)."""
        signed_in = await self._auth.register(
            principal, request.email, request.password, request.is_admin
        )
        return pb.RegisterResponse(
            user=user_to_proto(signed_in.user), **token_fields(signed_in.token)
        )

    async def Login(
        self, request: pb.LoginRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoginResponse:
        """Exchange credentials for an access token."""
        signed_in = await self._auth.login(request.email, request.password)
        return pb.LoginResponse(user=user_to_proto(signed_in.user), **token_fields(signed_in.token))

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
