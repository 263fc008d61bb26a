"""Individual numbers (個人番号): the 12-digit number and its check digit.

The check digit follows 行政手続における特定の個人を識別するための番号の利用等に関する法律施行令
第8条 and 総務省令第85号 第5条: with P_n the n-th digit counted from the right of the first
eleven digits and Q_n = n + 1 for 1 <= n <= 6, n - 5 for 7 <= n <= 11,
check = 11 - (sum(P_n * Q_n) mod 11), or 0 when the remainder is 0 or 1.

This module only validates and never logs a number. Only the unified address server may hold one.
"""

from __future__ import annotations

_WEIGHTS = tuple((n + 1) if n <= 6 else (n - 5) for n in range(1, 12))


class InvalidIndividualNumberError(ValueError):
    """The value is not a well-formed individual number; the message never contains it."""


def check_digit(first_eleven: str) -> int:
    """The check digit for the first eleven digits of an individual number."""
    if len(first_eleven) != 11 or not first_eleven.isascii() or not first_eleven.isdigit():
        raise InvalidIndividualNumberError("expected exactly 11 ASCII digits")
    total = sum(int(d) * w for d, w in zip(reversed(first_eleven), _WEIGHTS, strict=True))
    remainder = total % 11
    return 0 if remainder <= 1 else 11 - remainder


def validate(value: str) -> str:
    """Return ``value`` if it is a valid individual number, else raise with a reason (no value)."""
    if len(value) != 12:
        raise InvalidIndividualNumberError("an individual number has exactly 12 digits")
    if not value.isascii() or not value.isdigit():
        raise InvalidIndividualNumberError("an individual number has only the digits 0-9")
    if check_digit(value[:11]) != int(value[11]):
        raise InvalidIndividualNumberError("the check digit does not match")
    return value


def is_valid(value: str) -> bool:
    """Whether ``value`` is a valid individual number."""
    try:
        validate(value)
    except InvalidIndividualNumberError:
        return False
    return True


def complete(first_eleven: str) -> str:
    """The full 12-digit number for eleven digits (used by the registry stand-in to issue)."""
    return first_eleven + str(check_digit(first_eleven))


def mask(value: str) -> str:
    """A form safe for logs and screens: never more than the last two digits."""
    return "**********" + value[-2:] if len(value) == 12 else "<invalid>"
