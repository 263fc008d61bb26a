"""Logging: structlog, JSON lines in services, readable on a terminal, identifiers masked.

No personal data value may reach a log line. Keys that name identifiers are masked to a short
keyed digest (stable within a process run, so lines can be correlated, useless outside it);
keys that name personal data are dropped; any free-standing 12-digit run (an individual number
shape) in any string is replaced. Bind request context with ``bind_contextvars``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Identifiers: masked to a digest so a line can be correlated with others of the same run.
MASKED_KEYS = frozenset(
    {"unified_number", "linkage_code", "address_number", "provider_linkage_code", "subject"}
)
# Personal data: never logged at all, not even masked.
DROPPED_KEYS = frozenset(
    {"individual_number", "resident_code", "name", "birth_date", "content", "values", "password"}
)
_TWELVE_DIGITS = re.compile(r"(?<!\d)\d{12}(?!\d)")
_SALT = secrets.token_bytes(16)


def mask(value: object) -> str:
    """A short keyed digest of an identifier: correlatable in one run, meaningless outside."""
    digest = hashlib.blake2s(str(value).encode(), key=_SALT, digest_size=4).hexdigest()
    return f"~{digest}"


def _scrub(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key in DROPPED_KEYS:
            event[key] = "<redacted>"
        elif key in MASKED_KEYS and event[key]:
            event[key] = mask(event[key])
        elif isinstance(event[key], str):
            event[key] = _TWELVE_DIGITS.sub("<redacted-number>", event[key])
    return event


class _StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is now (test runners swap it per test)."""

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    debug = info = warning = warn = error = critical = exception = fatal = msg


def _stderr_logger_factory(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


def configure(*, json: bool | None = None, level: str | None = None) -> None:
    """Configure structlog once per process; JSON unless writing to a terminal."""
    if json is None:
        json = os.environ.get("LINKAGE_LOG_FORMAT", "") == "json" or not sys.stderr.isatty()
    level_name = (level or os.environ.get("LINKAGE_LOG_LEVEL", "INFO")).upper()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks are text by the time they are scrubbed: an exception's message may quote
            # values (a driver error its parameters), and those must be scrubbed too.
            structlog.processors.format_exc_info,
            _scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=_stderr_logger_factory,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    """A bound logger for a module."""
    return structlog.get_logger(name)
