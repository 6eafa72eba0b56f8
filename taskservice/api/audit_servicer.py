"""AuditService over gRPC: admins read the audit trail."""

from __future__ import annotations

import grpc

from taskservice.api.authentication import authenticated
from taskservice.api.convert import timestamp
from taskservice.db.models import AuditEvent
from taskservice.services.audit import AuditTrail
from taskservice.services.principal import Principal
from taskservice.v1 import audit_service_pb2 as pb
from taskservice.v1 import audit_service_pb2_grpc


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    """Adapts AuditService requests to the audit trail."""

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail

    @authenticated
    async def ListAuditEvents(
        self,
        request: pb.ListAuditEventsRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.ListAuditEventsResponse:
        """One page of events, newest first."""
        page = await self._trail.list_events(
            principal, request.filter, request.page_size, request.page_token
        )
        return pb.ListAuditEventsResponse(
            audit_events=[audit_event_to_proto(row) for row in page.events],
            next_page_token=page.next_page_token,
        )


def audit_event_to_proto(row: AuditEvent) -> pb.AuditEvent:
    """An audit row as the API shows it (0 for an unset id)."""
    return pb.AuditEvent(
        id=row.id,
        event=row.event,
        actor_id=row.actor_id or 0,
        target_user_id=row.target_user_id or 0,
        outcome=row.outcome,
        request_id=row.request_id or "",
        create_time=timestamp(row.create_time),
        method=row.method or "",
        permission=row.permission or "",
    )
