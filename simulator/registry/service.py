"""ResidentRegistryService: the gRPC edge of the registry stand-in, kept thin.

Owns who may call (``ua.<code>`` for organization ``<code>`` only, checked before anything
else, a refusal recorded in the ledger), the validation of the request (the individual number's
shape and check digit), and the response, which carries the serial and never the resident code.

Must never: echo or log the individual number (errors name the field, not the value), or block
the event loop.
"""

from __future__ import annotations

import asyncio
import re

import grpc

from linkage.errors import FieldViolation, InvalidArgument, PermissionDenied
from linkage.rpc import require_caller
from linkage.v1 import registry_pb2, registry_pb2_grpc
from simulator.registry.residents import SerialDesk
from unified_address.individual_number import InvalidIndividualNumberError, validate

Context = grpc.aio.ServicerContext[object, object]
ORG_CODE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
UA_PREFIX = "ua."


class ResidentRegistryService(registry_pb2_grpc.ResidentRegistryServiceServicer):
    """IssueProcessingSerial."""

    def __init__(self, desk: SerialDesk) -> None:
        self._desk = desk

    async def IssueProcessingSerial(  # noqa: N802 (gRPC method name)
        self, request: registry_pb2.IssueProcessingSerialRequest, context: Context
    ) -> registry_pb2.IssueProcessingSerialResponse:
        try:
            organization = _authorized_organization(request.organization)
        except PermissionDenied as refusal:
            await asyncio.to_thread(
                self._desk.record_refusal, require_caller(), request.organization, refusal.reason
            )
            raise
        number = _individual_number(request.individual_number)
        serial = await self._desk.issue(organization, number)
        return registry_pb2.IssueProcessingSerialResponse(processing_serial=serial)


def _authorized_organization(organization: str) -> str:
    identity = require_caller()
    if not ORG_CODE_RE.fullmatch(organization):
        raise InvalidArgument(
            "INVALID_ORGANIZATION",
            "organization must be an organization code",
            violations=[FieldViolation("organization", "must be an organization code")],
        )
    if identity != UA_PREFIX + organization:
        raise PermissionDenied(
            "NOT_THIS_ORGANIZATION", f"{identity} may not ask for organization {organization!r}"
        )
    return organization


def _individual_number(value: str) -> str:
    try:
        return validate(value)
    except InvalidIndividualNumberError as error:
        raise InvalidArgument(
            "INVALID_INDIVIDUAL_NUMBER",
            str(error),
            violations=[FieldViolation("individual_number", str(error))],
        ) from None
