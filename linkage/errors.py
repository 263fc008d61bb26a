"""The domain's one error hierarchy and its translation to gRPC status (AIP-193).

Domain code raises ``LinkageError`` subclasses; it never imports grpc. Each class carries its
canonical status code; each raise names a machine-readable ``reason`` (UPPER_SNAKE) and, for bad
input, the offending fields. ``to_rpc_status`` turns one into a ``google.rpc.Status`` with exactly
one ``ErrorInfo`` (and a ``BadRequest`` when fields are named); servicers send it with
``context.abort_with_status``. Messages never contain personal data values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import grpc

ERROR_DOMAIN = "linkage-gateway.local"


class Code(IntEnum):
    """The canonical gRPC codes we use (values as in google.rpc.Code), without importing grpc."""

    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: ``field`` is a path such as ``records[12].value.effective_from``."""

    field: str
    description: str


@dataclass(eq=False)
class LinkageError(Exception):
    """Base of every expected failure. Subclasses fix the status code."""

    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[FieldViolation] = ()

    code: ClassVar[Code] = Code.INTERNAL

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidArgument(LinkageError):
    """Malformed input; nothing was changed."""

    code = Code.INVALID_ARGUMENT


class NotFound(LinkageError):
    """The named thing does not exist (or is not visible to the caller)."""

    code = Code.NOT_FOUND


class AlreadyExists(LinkageError):
    """Creating something that exists."""

    code = Code.ALREADY_EXISTS


class PermissionDenied(LinkageError):
    """The caller may not do this; checked before existence (AIP-131)."""

    code = Code.PERMISSION_DENIED


class Unauthenticated(LinkageError):
    """The caller is not who it must be (no or wrong certificate, no session)."""

    code = Code.UNAUTHENTICATED


class FailedPrecondition(LinkageError):
    """The system is not in a state that allows this (e.g. no linkage code yet)."""

    code = Code.FAILED_PRECONDITION


class ResourceExhausted(LinkageError):
    """Too much: rate limits and size limits."""

    code = Code.RESOURCE_EXHAUSTED


class Unavailable(LinkageError):
    """A dependency is down; retrying later is safe."""

    code = Code.UNAVAILABLE


class DeadlineExceeded(LinkageError):
    """A wait ran out."""

    code = Code.DEADLINE_EXCEEDED


class Internal(LinkageError):
    """A bug or an invariant broken; reported without details."""

    code = Code.INTERNAL


def to_rpc_status(error: LinkageError) -> Any:
    """A ``grpc.Status`` for ``error`` carrying one ErrorInfo (and a BadRequest if fields)."""
    from google.protobuf import any_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2
    from grpc_status import rpc_status

    details = []
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=dict(error.metadata)
    )
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        packed_bad = any_pb2.Any()
        packed_bad.Pack(bad)
        details.append(packed_bad)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name), message=error.message, details=details
    )
    return rpc_status.to_status(status)


@dataclass(frozen=True, slots=True)
class RemoteError:
    """What a client learns from a failed call: the code name, reason and field violations."""

    code: str
    reason: str
    message: str
    violations: tuple[FieldViolation, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)


def remote_error(error: grpc.RpcError) -> RemoteError:
    """Parse the status details (ErrorInfo, BadRequest) of a failed call, sync or aio."""
    from google.rpc import error_details_pb2, status_pb2

    call: Any = error  # grpc.RpcError raised by a call is also a grpc.Call (code, details, ...)
    code = call.code()
    trailing: Any = call.trailing_metadata() or ()
    reason, violations, metadata = "", [], {}
    for key, value in trailing:
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return RemoteError(
        code=code.name if code is not None else "UNKNOWN",
        reason=reason,
        message=call.details() or "",
        violations=tuple(violations),
        metadata=metadata,
    )
