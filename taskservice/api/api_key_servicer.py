"""ApiKeyService over gRPC: create (the secret shown once), list and revoke API keys."""

from __future__ import annotations

from datetime import UTC

import grpc

from taskservice.api.authentication import authenticated
from taskservice.api.convert import permission_numbers, timestamp
from taskservice.calls.authorization import PERMISSION_NAMES
from taskservice.db.models import ApiKey
from taskservice.errors import FieldViolation
from taskservice.security.credentials import API_KEY_KIND
from taskservice.services.api_keys import ApiKeyService
from taskservice.services.principal import Principal
from taskservice.v1 import api_key_service_pb2 as pb
from taskservice.v1 import api_key_service_pb2_grpc


class ApiKeyServicer(api_key_service_pb2_grpc.ApiKeyServiceServicer):
    """Adapts ApiKeyService requests to the API key service."""

    def __init__(self, keys: ApiKeyService) -> None:
        self._keys = keys

    @authenticated
    async def CreateApiKey(
        self,
        request: pb.CreateApiKeyRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.CreateApiKeyResponse:
        """Create a key; its secret is in this response only."""
        expire_time, bad_expiry = None, None
        if request.HasField("expire_time"):
            try:
                expire_time = request.expire_time.ToDatetime(tzinfo=UTC)
            except (ValueError, OverflowError):
                bad_expiry = FieldViolation(
                    "expire_time", "not a valid timestamp (0001-01-01 to 9999-12-31)"
                )
        created = await self._keys.create(
            principal,
            request.user_id,
            request.display_name,
            expire_time,
            also=bad_expiry,
            permissions=[PERMISSION_NAMES.get(number, "") for number in request.permissions],
        )
        return pb.CreateApiKeyResponse(api_key=api_key_to_proto(created.key), secret=created.secret)

    @authenticated
    async def ListApiKeys(
        self,
        request: pb.ListApiKeysRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.ListApiKeysResponse:
        """One page of a user's keys."""
        page = await self._keys.list(
            principal, request.user_id, request.page_size, request.page_token
        )
        return pb.ListApiKeysResponse(
            api_keys=[api_key_to_proto(key) for key in page.keys],
            next_page_token=page.next_page_token,
        )

    @authenticated
    async def DeleteApiKey(
        self,
        request: pb.DeleteApiKeyRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.DeleteApiKeyResponse:
        """Revoke a key."""
        await self._keys.delete(principal, request.id)
        return pb.DeleteApiKeyResponse()


def api_key_to_proto(key: ApiKey) -> pb.ApiKey:
    """The public view of a key: never its secret or hash."""
    message = pb.ApiKey(
        id=key.id,
        user_id=key.user_id,
        display_name=key.display_name,
        prefix=f"{API_KEY_KIND}_{key.lookup}",
        create_time=timestamp(key.create_time),
        permissions=permission_numbers(key.permissions),
    )
    if key.expire_time is not None:
        message.expire_time.CopyFrom(timestamp(key.expire_time))
    if key.last_use_time is not None:
        message.last_use_time.CopyFrom(timestamp(key.last_use_time))
    return message
