"""``ReviewService``: the review queue (自動応答不可) for staff with the reviewer role.

Thin servicer: binds the staff console's certificate to the tenant the request names, has
``Staff`` check the session and the REVIEWER role (refusals are recorded there), parses the
request, and calls ``server.review.Review`` inside ``Staff.operation`` so each call is an access
record of the reviewer (the review domain adds its own records of what was seen and decided).

Must never: release a value without a named reviewer's session, page past what it returns, or
call ``context.abort`` for a domain error.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from linkage.errors import FieldViolation, InvalidArgument
from linkage.records.model import from_micros, to_micros
from linkage.v1 import review_pb2, review_pb2_grpc
from server.querykeys import timestamp
from server.review import HeldView, Review
from server.service_staff import bearer_token, console_tenant
from server.staff import Actor, Role, Staff
from server.tenancy import Tenant, Tenants, code_of_parent, require_id, split_child_name

pb = review_pb2
LIST = "ReviewService.ListHeldProvisions"
APPROVE = "ReviewService.ApproveHeldProvision"
DECLINE = "ReviewService.DeclineHeldProvision"
DEFAULT_PAGE = 50
MAX_PAGE = 500
HELD_COLLECTION = "heldProvisions"


def page_size(requested: int) -> int:
    """AIP-158: 0 → the default, above the maximum → the maximum, negative → INVALID_ARGUMENT."""
    if requested < 0:
        raise InvalidArgument(
            "INVALID_PAGE_SIZE",
            "page_size must not be negative",
            violations=(FieldViolation("page_size", "negative"),),
        )
    return min(requested or DEFAULT_PAGE, MAX_PAGE)


def encode_page_token(view: HeldView) -> str:
    """The queue position after ``view`` (held time and permit id), opaque to the client."""
    raw = f"{to_micros(view.held_at)}:{view.permit_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_page_token(token: str) -> tuple[datetime, str] | None:
    """The position a page token names; INVALID_ARGUMENT when it was not made here."""
    if not token:
        return None
    try:
        micros, _, permit_id = base64.urlsafe_b64decode(token).decode("ascii").partition(":")
        position = from_micros(int(micros)), require_id(permit_id, "page_token")
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError, InvalidArgument):
        raise InvalidArgument(
            "INVALID_PAGE_TOKEN",
            "page_token was not returned by ListHeldProvisions",
            violations=(FieldViolation("page_token", "malformed"),),
        ) from None
    return position


def held_message(tenant: str, view: HeldView) -> pb.HeldProvision:
    return pb.HeldProvision(
        name=f"organizations/{tenant}/{HELD_COLLECTION}/{view.permit_id}",
        requester=view.requester,
        procedure=view.procedure,
        data_items=view.data_items,
        unified_number=view.unified_number,
        values=view.values,
        held_at=timestamp(view.held_at),
        seal_deadline=timestamp(view.seal_deadline),
    )


class ReviewServicer(review_pb2_grpc.ReviewServiceServicer):
    """The thin gRPC edge of ``server.review.Review`` for reviewers."""

    def __init__(self, tenants: Tenants, staff: Staff, review: Review) -> None:
        self._tenants = tenants
        self._staff = staff
        self._review = review

    async def _reviewer(self, named_code: str, context: Any, operation: str) -> Actor:
        tenant: Tenant = console_tenant(self._tenants, named_code)
        return await self._staff.authorize(
            tenant.code, bearer_token(context), operation, Role.REVIEWER
        )

    async def ListHeldProvisions(  # noqa: N802 (gRPC method name)
        self, request: pb.ListHeldProvisionsRequest, context: Any
    ) -> pb.ListHeldProvisionsResponse:
        actor = await self._reviewer(code_of_parent(request.parent), context, LIST)
        size = page_size(request.page_size)
        after = decode_page_token(request.page_token)
        async with self._staff.operation(actor, LIST):
            views, more = await self._review.list_held_page(
                actor.tenant, limit=size, after=after, staff_id=actor.username
            )
        return pb.ListHeldProvisionsResponse(
            held_provisions=[held_message(actor.tenant, view) for view in views],
            next_page_token=encode_page_token(views[-1]) if more and views else "",
        )

    async def ApproveHeldProvision(  # noqa: N802 (gRPC method name)
        self, request: pb.ApproveHeldProvisionRequest, context: Any
    ) -> pb.ApproveHeldProvisionResponse:
        code, permit_id = split_child_name(request.name, HELD_COLLECTION)
        actor = await self._reviewer(code, context, APPROVE)
        require_id(permit_id, "name")
        async with self._staff.operation(actor, APPROVE):
            delivered = await self._review.approve(actor.tenant, permit_id, actor.username)
        return pb.ApproveHeldProvisionResponse(delivered=delivered)

    async def DeclineHeldProvision(  # noqa: N802 (gRPC method name)
        self, request: pb.DeclineHeldProvisionRequest, context: Any
    ) -> pb.DeclineHeldProvisionResponse:
        code, permit_id = split_child_name(request.name, HELD_COLLECTION)
        actor = await self._reviewer(code, context, DECLINE)
        require_id(permit_id, "name")
        async with self._staff.operation(actor, DECLINE):
            delivered = await self._review.decline(
                actor.tenant, permit_id, actor.username, request.reason
            )
        return pb.DeclineHeldProvisionResponse(delivered=delivered)
