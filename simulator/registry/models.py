"""The registry's table ``registry_residents`` on the project-wide ``linkage.db.Base``.

Owns the schema of the residents the stand-in knows. The individual number is kept only as a
blind index (``linkage.atrest.DataKey.blind_index``, keyed HMAC-SHA256): equality lookups work,
a stolen database without the key file reveals no number.

Must never: hold an individual number in the clear, in any column.
"""

from __future__ import annotations

from sqlalchemy import LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from linkage.db import Base


class Resident(Base):
    """One resident (住民): resident code, blind index of the individual number, municipality."""

    __tablename__ = "registry_residents"

    resident_code: Mapped[str] = mapped_column(String(11), primary_key=True)
    number_index: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    municipality: Mapped[str] = mapped_column(String(32))
