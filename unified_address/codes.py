"""Linkage-code requests (符号要求) through the processing-serial flow.

Owns the two-step request for one person: a processing serial (処理通番) from the resident
registry, asked with the individual number, then ``AcquireLinkageCode`` at the intermediate
server with the serial and the unified number. Both steps are idempotent upstream, so a retry
is always safe. A failure of either step is an outcome with a machine-readable reason
(``REGISTRY_<reason>`` or ``SERVER_<reason>``), never an exception: the person is marked FAILED
and stays visible until a retry succeeds. Many requests run with bounded concurrency.

Must never: send the individual number anywhere but the registry, or hold it longer than one
request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from linkage.errors import LinkageError
from unified_address.audit import upper_snake
from unified_address.ports import IntermediateServer, SerialIssuer

__all__ = ["CodeOutcome", "CodeRequester"]


@dataclass(frozen=True, slots=True)
class CodeOutcome:
    """The result of one request: acquired, or the reason it failed."""

    unified_number: str
    acquired: bool
    reason: str = ""


def _failure(stage: str, error: LinkageError) -> str:
    return f"{stage}_{upper_snake(error.reason) or error.code.name}"[:160].rstrip("_")


class CodeRequester:
    """Requests linkage codes; ``concurrency`` bounds the calls in flight at once."""

    def __init__(
        self, registry: SerialIssuer, server: IntermediateServer, *, concurrency: int = 16
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._registry = registry
        self._server = server
        self._concurrency = concurrency

    async def request(self, unified_number: str, individual_number: str) -> CodeOutcome:
        """Serial from the registry, then the code at the intermediate server."""
        try:
            serial = await self._registry.issue_processing_serial(individual_number)
        except LinkageError as error:
            return CodeOutcome(unified_number, False, _failure("REGISTRY", error))
        try:
            await self._server.acquire_linkage_code(unified_number, serial)
        except LinkageError as error:
            return CodeOutcome(unified_number, False, _failure("SERVER", error))
        return CodeOutcome(unified_number, True)

    async def request_many(self, people: Sequence[tuple[str, str]]) -> list[CodeOutcome]:
        """Request codes for (unified number, individual number) pairs; outcomes in order.

        A fixed pool of workers takes the pairs in turn, so a whole municipality costs
        ``concurrency`` tasks, not one task per person.
        """
        if len(people) == 1:  # the per-person path: no task machinery
            return [await self.request(*people[0])]
        outcomes: list[CodeOutcome | None] = [None] * len(people)
        positions = iter(range(len(people)))

        async def worker() -> None:
            for position in positions:  # a shared iterator: each position is taken once
                outcomes[position] = await self.request(*people[position])

        workers = min(self._concurrency, len(people))
        await asyncio.gather(*(worker() for _ in range(workers)))
        return [outcome for outcome in outcomes if outcome is not None]
