"""Request validation for NetworkService: protobuf messages in, domain values out.

Owns every field rule of the network's requests and the error that reports them: one
``InvalidArgument`` with a ``FieldViolation`` per bad field (AIP-193), so a caller fixes all of
them at once. Nothing is written before a request has passed, so bad input changes nothing.
Also owns the opaque page token of ListOrganizations.

Must never: echo a personal value in an error (a bad code or resident code is reported by field
name, not by value), or import grpc.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from linkage.codes import LINKAGE_CODE_RE
from linkage.errors import FieldViolation, InvalidArgument, ResourceExhausted
from linkage.v1 import common_pb2, network_pb2
from permission_list.vocabulary import CAPACITIES
from simulator.network.codes import RESIDENT_CODE_RE, SERIAL_RE
from simulator.network.directory import OrgEntry, SigningKey
from simulator.network.permits import QueryRequest
from simulator.network.queries import BatchRequest

MAX_QUERIES = 5000
MAX_ITEMS = 32
MAX_VIOLATIONS = 20  # status details travel in trailers, which are small: report the first ones
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

ORG_CODE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")  # also a valid part of "org.<code>"
NAME_RE = re.compile(r"organizations/([a-z0-9][a-z0-9-]{0,31})")
QUERY_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
PROCEDURE_RE = re.compile(r"[a-z0-9_]{1,16}:[A-Za-z0-9_-]{1,32}")
ITEM_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
CAPACITY_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
ENDPOINT_RE = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})")
MAX_ENDPOINT_CHARS = 300  # the directory's column
LGC_RE = re.compile(r"(?:[0-9]{5,6})?")
KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_TOKEN_PREFIX = "v1:"  # noqa: S105 (a page token version, not a secret)


@dataclass
class Violations:
    """Collects field violations and raises them together."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, path: str, description: str) -> None:
        self.items.append(FieldViolation(path, description))

    def raise_if_any(self, reason: str = "INVALID_FIELDS") -> None:
        if self.items:
            shown = self.items[:MAX_VIOLATIONS]
            more = len(self.items) - len(shown)
            message = "; ".join(f"{v.field}: {v.description}" for v in shown[:3])
            if len(self.items) > 3:
                message += f" (and {len(self.items) - 3} more)"
            raise InvalidArgument(
                reason,
                message,
                metadata={"violations": str(len(self.items))} if more else {},
                violations=shown,
            )


def invalid(path: str, description: str, reason: str = "INVALID_FIELDS") -> InvalidArgument:
    return InvalidArgument(
        reason, f"{path}: {description}", violations=[FieldViolation(path, description)]
    )


def org_code(value: str, path: str) -> str:
    """An organization code, or INVALID_ARGUMENT."""
    if not ORG_CODE_RE.fullmatch(value):
        raise invalid(path, "must be 1-32 characters of [a-z0-9-], starting with a letter or digit")
    return value


def resource_name(value: str, path: str = "name") -> str:
    """The code of "organizations/{code}", or INVALID_ARGUMENT."""
    match = NAME_RE.fullmatch(value)
    if match is None:
        raise invalid(path, "must be organizations/{code}")
    return match.group(1)


def _timestamp(value: Timestamp) -> datetime:
    return value.ToDatetime(UTC)


def public_key(
    message: common_pb2.PublicKey, path: str, now: datetime, problems: Violations
) -> SigningKey | None:
    """A signing key as published: 32 bytes, its key id the sha256 prefix of the key."""
    if len(message.key) != 32:
        problems.add(f"{path}.key", "must be a raw 32-byte Ed25519 public key")
        return None
    # Only the shape is checked: linkage.keys.KeyRing ids (sha256 over both public keys of a
    # generation) and linkage.crypto.key_id (sha256 of the key) are both in use. The id is a
    # label for lookup; the signature check against the key bytes is what protects.
    if not KEY_ID_RE.fullmatch(message.key_id):
        problems.add(f"{path}.key_id", "must be 16 lowercase hex digits")
        return None
    not_before = _timestamp(message.not_before) if message.HasField("not_before") else now
    not_after = _timestamp(message.not_after) if message.HasField("not_after") else None
    if not_after is not None and not_after <= not_before:
        problems.add(f"{path}.not_after", "must be after not_before")
        return None
    return SigningKey(message.key_id, message.key, not_before, not_after)


def registration(request: network_pb2.RegisterOrganizationRequest, now: datetime) -> OrgEntry:
    """RegisterOrganization → the directory entry to store."""
    org = request.organization
    problems = Violations()
    if not ORG_CODE_RE.fullmatch(org.code):
        problems.add("organization.code", "must be 1-32 characters of [a-z0-9-]")
    if not org.display_name.strip() or len(org.display_name) > 200:
        problems.add("organization.display_name", "must be 1-200 characters")
    if not org.capacities:
        problems.add("organization.capacities", "must name at least one capacity")
    for i, capacity in enumerate(org.capacities):
        if capacity not in CAPACITIES:
            problems.add(f"organization.capacities[{i}]", "not a capacity of the permission list")
    if len(set(org.capacities)) != len(org.capacities):
        problems.add("organization.capacities", "must not repeat a capacity")
    _endpoint(org.endpoint, "organization.endpoint", problems)
    if not LGC_RE.fullmatch(org.local_government_code):
        problems.add("organization.local_government_code", "must be empty or 5-6 digits")
    if not org.signing_keys:
        problems.add("organization.signing_keys", "must hold at least one key")
    keys = [
        public_key(key, f"organization.signing_keys[{i}]", now, problems)
        for i, key in enumerate(org.signing_keys)
    ]
    if len({key.key_id for key in org.signing_keys}) != len(org.signing_keys):
        problems.add("organization.signing_keys", "must not repeat a key")
    problems.raise_if_any()
    return OrgEntry(
        code=org.code,
        display_name=org.display_name,
        capacities=tuple(org.capacities),
        endpoint=org.endpoint,
        local_government_code=org.local_government_code,
        signing_keys=tuple(key for key in keys if key is not None),
    )


def _endpoint(value: str, path: str, problems: Violations) -> None:
    """``host:port``, or the replicas of one platform as ``ip:port,ip:port,...`` (the network
    balances them round robin, ``linkage.rpc.channel_target``): IP addresses of one family."""
    parts = value.split(",")
    if len(value) > MAX_ENDPOINT_CHARS:
        problems.add(path, f"must be at most {MAX_ENDPOINT_CHARS} characters")
    elif len(parts) == 1:
        if not _host_port(value):
            problems.add(path, "must be host:port")
    elif not all(_host_port(part) for part in parts):
        problems.add(path, "must be host:port or a comma-separated list of ip:port")
    elif len({_ip_version(part) for part in parts}) != 1 or _ip_version(parts[0]) == 0:
        problems.add(path, "a list of replicas must name IP addresses of one family")


def _host_port(value: str) -> bool:
    match = ENDPOINT_RE.fullmatch(value)
    return match is not None and 0 < int(match.group(1)) < 65536


def _ip_version(host_port: str) -> int:
    """4 or 6 for ``ip:port``, 0 if the host is a name."""
    host = host_port.rpartition(":")[0].removeprefix("[").removesuffix("]")
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


def page(request: network_pb2.ListOrganizationsRequest) -> tuple[str, int]:
    """(code to start after, page size) of a ListOrganizations request."""
    if request.page_size < 0:
        raise invalid("page_size", "must not be negative")
    size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not request.page_token:
        return "", size
    try:
        text = base64.urlsafe_b64decode(request.page_token.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise invalid(
            "page_token", "not a token this service issued", "INVALID_PAGE_TOKEN"
        ) from None
    after = text.removeprefix(_TOKEN_PREFIX)
    if not text.startswith(_TOKEN_PREFIX) or not ORG_CODE_RE.fullmatch(after):
        raise invalid("page_token", "not a token this service issued", "INVALID_PAGE_TOKEN")
    return after, size


def page_token(last_code: str) -> str:
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{last_code}".encode()).decode("ascii")


def rotation(request: network_pb2.RotateOrganizationKeysRequest, now: datetime) -> SigningKey:
    if not request.HasField("signing_key"):
        raise invalid("signing_key", "is required")
    problems = Violations()
    key = public_key(request.signing_key, "signing_key", now, problems)
    problems.raise_if_any()
    assert key is not None
    return key


def serial_registration(
    request: network_pb2.RegisterProcessingSerialRequest,
) -> tuple[str, str, str]:
    """(serial, resident code, organization); the resident code is never echoed."""
    problems = Violations()
    if not SERIAL_RE.fullmatch(request.processing_serial):
        problems.add("processing_serial", "must be 16-128 characters of [A-Za-z0-9_-]")
    if not RESIDENT_CODE_RE.fullmatch(request.resident_code):
        problems.add("resident_code", "must be 11 digits")
    if not ORG_CODE_RE.fullmatch(request.organization):
        problems.add("organization", "must be an organization code")
    problems.raise_if_any()
    return request.processing_serial, request.resident_code, request.organization


def serial(value: str, path: str = "processing_serial") -> str:
    if not SERIAL_RE.fullmatch(value):
        raise invalid(path, "must be 16-128 characters of [A-Za-z0-9_-]")
    return value


def linkage_code(value: str, path: str = "linkage_code") -> str:
    if not LINKAGE_CODE_RE.fullmatch(value):
        raise invalid(path, "must be a 20-character linkage code")
    return value


def submission(request: network_pb2.SubmitQueriesRequest) -> BatchRequest:
    """SubmitQueries → a validated batch. Too many queries is RESOURCE_EXHAUSTED, the rest of
    what is wrong is one INVALID_ARGUMENT listing the fields."""
    if len(request.queries) > MAX_QUERIES:
        raise ResourceExhausted(
            "BATCH_TOO_LARGE",
            f"a batch holds at most {MAX_QUERIES} queries, got {len(request.queries)}",
            metadata={"maxQueries": str(MAX_QUERIES)},
        )
    problems = Violations()
    if not CAPACITY_RE.fullmatch(request.requester_capacity):
        problems.add("requester_capacity", "must be a capacity id")
    if not request.HasField("requester_key") or not request.requester_key.body:
        problems.add("requester_key", "a signed RequesterKey is required")
    if not request.queries:
        problems.add("queries", "must hold at least one query")
    queries: list[QueryRequest] = []
    seen: set[str] = set()
    for i, query in enumerate(request.queries):
        parsed = _query(query, f"queries[{i}]", problems)
        if query.query_id in seen:
            problems.add(f"queries[{i}].query_id", "repeats an earlier query id of the batch")
        seen.add(query.query_id)
        if parsed is not None:
            queries.append(parsed)
    problems.raise_if_any()
    return BatchRequest(
        requester=request.requester,
        requester_capacity=request.requester_capacity,
        requester_key=request.requester_key,
        queries=tuple(queries),
    )


def _query(
    message: network_pb2.QuerySubmission, path: str, problems: Violations
) -> QueryRequest | None:
    before = len(problems.items)
    if not QUERY_ID_RE.fullmatch(message.query_id):
        problems.add(f"{path}.query_id", "must be 1-128 characters of [A-Za-z0-9._:-]")
    if not PROCEDURE_RE.fullmatch(message.procedure):
        problems.add(f"{path}.procedure", "must be a procedure id such as table2:82")
    if not ORG_CODE_RE.fullmatch(message.provider):
        problems.add(f"{path}.provider", "must be an organization code")
    _items(message.data_items, f"{path}.data_items", problems)
    if not LINKAGE_CODE_RE.fullmatch(message.linkage_code):
        problems.add(f"{path}.linkage_code", "must be a 20-character linkage code")
    on_date = _date(message.on_date, f"{path}.on_date", problems)
    if len(problems.items) != before or on_date is None:
        return None
    return QueryRequest(
        query_id=message.query_id,
        procedure=message.procedure,
        provider=message.provider,
        data_items=tuple(message.data_items),
        linkage_code=message.linkage_code,
        on_date=on_date,
    )


def _items(items: Sequence[str], path: str, problems: Violations) -> None:
    if not 0 < len(items) <= MAX_ITEMS:
        problems.add(path, f"must hold 1-{MAX_ITEMS} data items")
    for j, item in enumerate(items):
        if not ITEM_RE.fullmatch(item):
            problems.add(f"{path}[{j}]", "must be a data item id")
    if len(set(items)) != len(items):
        problems.add(path, "must not repeat an item")


def _date(value: str, path: str, problems: Violations) -> date | None:
    if DATE_RE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    problems.add(path, "must be a date YYYY-MM-DD")
    return None


def late_answers(request: network_pb2.DeliverLateAnswersRequest) -> common_pb2.SignedEnvelope:
    envelope = request.answer_batch
    problems = Violations()
    if not envelope.body:
        problems.add("answer_batch.body", "is required")
    if len(envelope.signature) != 64:
        problems.add("answer_batch.signature", "must be a 64-byte Ed25519 signature")
    if not envelope.signer:
        problems.add("answer_batch.signer", "is required")
    problems.raise_if_any()
    return envelope
