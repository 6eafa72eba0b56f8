"""UserService over gRPC: GetMe for everyone, the rest for admins."""

from __future__ import annotations

import grpc

from taskservice.api.authentication import authenticated
from taskservice.api.convert import USER_KINDS, user_to_proto
from taskservice.calls.authorization import PERMISSION_NAMES
from taskservice.services.principal import Principal
from taskservice.services.users import UserChanges, UserService
from taskservice.v1 import user_service_pb2 as pb
from taskservice.v1 import user_service_pb2_grpc


class UserServicer(user_service_pb2_grpc.UserServiceServicer):
    """Adapts UserService requests to the user service."""

    def __init__(self, users: UserService) -> None:
        self._users = users

    @authenticated
    async def ListUsers(
        self, request: pb.ListUsersRequest, context: grpc.aio.ServicerContext, principal: Principal
    ) -> pb.ListUsersResponse:
        """One page of users."""
        kind = next(
            (stored for stored, number in USER_KINDS.items() if number == request.kind), None
        )
        page = await self._users.list_users(principal, request.page_size, request.page_token, kind)
        return pb.ListUsersResponse(
            users=[user_to_proto(user) for user in page.users],
            next_page_token=page.next_page_token,
        )

    @authenticated
    async def GetMe(
        self, request: pb.GetMeRequest, context: grpc.aio.ServicerContext, principal: Principal
    ) -> pb.GetMeResponse:
        """The caller."""
        return pb.GetMeResponse(user=user_to_proto(await self._users.get_me(principal)))

    @authenticated
    async def GetUser(
        self, request: pb.GetUserRequest, context: grpc.aio.ServicerContext, principal: Principal
    ) -> pb.GetUserResponse:
        """One user."""
        user = await self._users.get_user(principal, request.id)
        return pb.GetUserResponse(user=user_to_proto(user))

    @authenticated
    async def UpdateUser(
        self, request: pb.UpdateUserRequest, context: grpc.aio.ServicerContext, principal: Principal
    ) -> pb.UpdateUserResponse:
        """Change the fields named in the update mask."""
        changes = UserChanges(
            paths=frozenset(request.update_mask.paths),
            email=request.user.email,
            is_active=request.user.is_active,
            is_admin=request.user.is_admin,
            display_name=request.user.display_name,
            permissions=tuple(PERMISSION_NAMES.get(n, "") for n in request.user.permissions),
        )
        user = await self._users.update_user(principal, request.user.id, changes)
        return pb.UpdateUserResponse(user=user_to_proto(user))

    @authenticated
    async def DeleteUser(
        self, request: pb.DeleteUserRequest, context: grpc.aio.ServicerContext, principal: Principal
    ) -> pb.DeleteUserResponse:
        """Delete a user and their tasks."""
        await self._users.delete_user(principal, request.id)
        return pb.DeleteUserResponse()

    @authenticated
    async def CreateServiceAccount(
        self,
        request: pb.CreateServiceAccountRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.CreateServiceAccountResponse:
        """Create a service account with the permissions asked for."""
        user = await self._users.create_service_account(
            principal,
            request.display_name,
            [PERMISSION_NAMES.get(number, "") for number in request.permissions],
        )
        return pb.CreateServiceAccountResponse(user=user_to_proto(user))
