"""Conversions between protobuf messages and the plain values services use."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from taskservice.db.models import User
from taskservice.security.tokens import IssuedToken
from taskservice.v1 import user_pb2


def timestamp(value: datetime) -> Timestamp:
    """An aware datetime as a protobuf Timestamp."""
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def user_to_proto(user: User) -> user_pb2.User:
    """The public view of a user: never the password hash or token version."""
    return user_pb2.User(
        id=user.id,
        email=user.email,
        is_active=user.is_active,
        is_admin=user.is_admin,
        create_time=timestamp(user.create_time),
        update_time=timestamp(user.update_time),
    )


def token_fields(token: IssuedToken) -> dict[str, object]:
    """The access-token fields shared by Register, Login and ChangePassword responses."""
    return {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_in": token.expires_in,
    }
