"""Individual numbers (個人番号) at rest: parsing at the door, sealing, the blind index.

Owns the only three things the server ever does with an individual number besides handing it to
the resident registry: check it (``parse``: check digit, a field violation without the value),
seal it to one person's row (``seal``/``open``, AES-GCM bound to ``<org>|<unified_number>`` so a
token moved to another row fails), and derive the keyed blind index used to find the person
holding it (``index``) without decrypting every row.

Must never: log, print, ``repr`` or put into an error message a number; store one in clear; use
an unkeyed digest for the index (12 digits are trivially enumerable).
"""

from __future__ import annotations

from pathlib import Path

from linkage.atrest import DataKey
from linkage.errors import FieldViolation, InvalidArgument
from unified_address.individual_number import InvalidIndividualNumberError, validate

__all__ = ["NumberVault", "parse_individual_number"]

INVALID_INDIVIDUAL_NUMBER = "INVALID_INDIVIDUAL_NUMBER"


def parse_individual_number(value: str, field: str = "individual_number") -> str:
    """``value`` if it is a valid individual number; else INVALID_ARGUMENT naming ``field``.

    The description says what is wrong (length, digits, check digit), never the value.
    """
    try:
        return validate(value)
    except InvalidIndividualNumberError as error:
        raise InvalidArgument(
            INVALID_INDIVIDUAL_NUMBER,
            f"{field} is not a valid individual number",
            violations=(FieldViolation(field, str(error)),),
        ) from None


class NumberVault:
    """Seals individual numbers for one organization with its data key."""

    __slots__ = ("_index_prefix", "_key", "_organization")

    def __init__(self, key: DataKey, organization: str) -> None:
        self._key = key
        self._organization = organization
        # Domain-separate the index per organization, should two ever share a key file.
        self._index_prefix = f"ua.individual_number|{organization}|".encode()

    def __repr__(self) -> str:
        return f"NumberVault(organization={self._organization!r})"

    @classmethod
    def open_dir(cls, data_dir: Path, organization: str) -> NumberVault:
        """The vault whose key file lives in ``data_dir`` (created, 0600, on first use)."""
        return cls(DataKey.load_or_create(data_dir / f"ua.{organization}.datakey"), organization)

    def _context(self, unified_number: str) -> bytes:
        return f"{self._organization}|{unified_number}".encode()

    def seal(self, unified_number: str, individual_number: str) -> bytes:
        """A token of ``individual_number`` that opens only for ``unified_number``'s row."""
        return self._key.encrypt(individual_number.encode(), context=self._context(unified_number))

    def open(self, unified_number: str, token: bytes) -> str:
        """The individual number sealed in ``token`` for ``unified_number``."""
        return self._key.decrypt(token, context=self._context(unified_number)).decode()

    def index(self, individual_number: str) -> bytes:
        """The keyed blind index of ``individual_number`` (32 bytes, deterministic)."""
        return self._key.blind_index(self._index_prefix + individual_number.encode())
