"""``SystemManagementService``: statistics and purges for staff with the administrator role.

Thin servicer: binds the staff console's certificate to the tenant the request names, has
``Staff`` check the session and the ADMINISTRATOR role, parses the period, and calls
``server.system.SystemManagement`` inside ``Staff.operation`` (each call is an access record).

Must never: count another tenant's records, or call ``context.abort`` for a domain error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from linkage.errors import FieldViolation, InvalidArgument
from linkage.v1 import system_management_pb2, system_management_pb2_grpc
from server.service_staff import bearer_token, console_tenant
from server.staff import Actor, Role, Staff
from server.system import SystemManagement
from server.tenancy import Tenants, code_of_parent

pb = system_management_pb2
GET_STATISTICS = "SystemManagementService.GetStatistics"
PURGE_EXPIRED = "SystemManagementService.PurgeExpired"
# Timestamp's documented range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def time_of(message: Any, field_name: str) -> datetime | None:
    """An optional Timestamp field as an aware UTC datetime; INVALID_ARGUMENT out of range."""
    if not message.HasField(field_name):
        return None
    stamp: Timestamp = getattr(message, field_name)
    if not _MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS or not 0 <= stamp.nanos < 10**9:
        raise InvalidArgument(
            "INVALID_TIME",
            f"{field_name} is out of range",
            violations=(FieldViolation(field_name, "not a valid timestamp"),),
        )
    return stamp.ToDatetime(tzinfo=UTC)


class SystemManagementServicer(system_management_pb2_grpc.SystemManagementServiceServicer):
    """The thin gRPC edge of ``server.system.SystemManagement`` for administrators."""

    def __init__(self, tenants: Tenants, staff: Staff, system: SystemManagement) -> None:
        self._tenants = tenants
        self._staff = staff
        self._system = system

    async def _administrator(self, parent: str, context: Any, operation: str) -> Actor:
        tenant = console_tenant(self._tenants, code_of_parent(parent))
        return await self._staff.authorize(
            tenant.code, bearer_token(context), operation, Role.ADMINISTRATOR
        )

    async def GetStatistics(  # noqa: N802 (gRPC method name)
        self, request: pb.GetStatisticsRequest, context: Any
    ) -> pb.GetStatisticsResponse:
        actor = await self._administrator(request.parent, context, GET_STATISTICS)
        start = time_of(request, "start_time")
        end = time_of(request, "end_time")
        async with self._staff.operation(actor, GET_STATISTICS):
            counts = await self._system.statistics(actor.tenant, start, end)
        return pb.GetStatisticsResponse(
            rows=[
                pb.StatisticsRow(event=c.event, data_item=c.data_item, count=c.count)
                for c in counts
            ]
        )

    async def PurgeExpired(  # noqa: N802 (gRPC method name)
        self, request: pb.PurgeExpiredRequest, context: Any
    ) -> pb.PurgeExpiredResponse:
        actor = await self._administrator(request.parent, context, PURGE_EXPIRED)
        async with self._staff.operation(actor, PURGE_EXPIRED):
            report = await self._system.purge_expired(actor.tenant)
        return pb.PurgeExpiredResponse(
            query_results_deleted=report.query_results_deleted,
            duplicates_deleted=report.duplicates_deleted,
        )
