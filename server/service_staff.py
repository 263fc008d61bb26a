"""``StaffService``: sign-in, sign-out, password change and accounts, for staff consoles.

Thin servicer (職員認証・権限管理機能): binds the caller's certificate (``staff-console.<code>``)
to the tenant the request names before anything else, reads the session token from the metadata
``authorization: Bearer <token>``, calls ``server.staff`` and builds the response. Also home of
the two helpers the other staff services share (``bearer_token``, ``console_tenant``).

Must never: log a password or token, check a session or a role itself (``Staff`` does, and
records the refusal), or call ``context.abort`` for a domain error.
"""

from __future__ import annotations

from typing import Any

from linkage.errors import FieldViolation, InvalidArgument
from linkage.rpc import caller
from linkage.v1 import staff_pb2, staff_pb2_grpc
from server.querykeys import timestamp
from server.staff import CREATE_STAFF_ACCOUNT, Role, Staff
from server.tenancy import Tenant, Tenants, code_of_parent

pb = staff_pb2
_BEARER = "bearer "
_PROTO_OF_ROLE: dict[Role, pb.StaffRole.ValueType] = {
    Role.OPERATOR: pb.STAFF_ROLE_OPERATOR,
    Role.REVIEWER: pb.STAFF_ROLE_REVIEWER,
    Role.ADMINISTRATOR: pb.STAFF_ROLE_ADMINISTRATOR,
}
_ROLE_OF_PROTO: dict[int, Role] = {int(value): role for role, value in _PROTO_OF_ROLE.items()}


def bearer_token(context: Any) -> str:
    """The session token of ``authorization: Bearer <token>``; "" when there is none."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            if value[: len(_BEARER)].lower() == _BEARER:
                return value[len(_BEARER) :].strip()
            return ""
    return ""


def console_tenant(tenants: Tenants, named_code: str | None = None) -> Tenant:
    """The tenant of the calling staff console, which must be the one the request names."""
    return tenants.for_staff_console(caller(), named_code)


def roles_of_request(values: list[int]) -> list[Role]:
    """Proto roles → domain roles; INVALID_ARGUMENT for UNSPECIFIED or an unknown value."""
    roles: list[Role] = []
    for index, value in enumerate(values):
        role = _ROLE_OF_PROTO.get(value)
        if role is None:
            raise InvalidArgument(
                "INVALID_ROLE",
                "roles must be OPERATOR, REVIEWER or ADMINISTRATOR",
                violations=(FieldViolation(f"roles[{index}]", "unspecified or unknown role"),),
            )
        roles.append(role)
    return roles


class StaffServicer(staff_pb2_grpc.StaffServiceServicer):
    """The thin gRPC edge of ``server.staff.Staff``."""

    def __init__(self, tenants: Tenants, staff: Staff) -> None:
        self._tenants = tenants
        self._staff = staff

    async def SignIn(  # noqa: N802 (gRPC method name)
        self, request: pb.SignInRequest, context: Any
    ) -> pb.SignInResponse:
        tenant = console_tenant(self._tenants, code_of_parent(request.parent))
        signed = await self._staff.sign_in(tenant.code, request.username, request.password)
        return pb.SignInResponse(
            session_token=signed.token,
            expires_at=timestamp(signed.expires_at),
            password_change_required=signed.password_change_required,
            roles=[_PROTO_OF_ROLE[role] for role in signed.roles],
        )

    async def SignOut(  # noqa: N802 (gRPC method name)
        self, request: pb.SignOutRequest, context: Any
    ) -> pb.SignOutResponse:
        tenant = console_tenant(self._tenants)
        await self._staff.sign_out(tenant.code, bearer_token(context))
        return pb.SignOutResponse()

    async def ChangePassword(  # noqa: N802 (gRPC method name)
        self, request: pb.ChangePasswordRequest, context: Any
    ) -> pb.ChangePasswordResponse:
        tenant = console_tenant(self._tenants)
        await self._staff.change_password(
            tenant.code, bearer_token(context), request.current_password, request.new_password
        )
        return pb.ChangePasswordResponse()

    async def CreateStaffAccount(  # noqa: N802 (gRPC method name)
        self, request: pb.CreateStaffAccountRequest, context: Any
    ) -> pb.CreateStaffAccountResponse:
        tenant = console_tenant(self._tenants, code_of_parent(request.parent))
        actor = await self._staff.authorize(
            tenant.code, bearer_token(context), CREATE_STAFF_ACCOUNT, Role.ADMINISTRATOR
        )
        roles = roles_of_request(list(request.roles))
        name = await self._staff.create_account(
            actor, request.username, request.initial_password, roles
        )
        return pb.CreateStaffAccountResponse(name=name)
