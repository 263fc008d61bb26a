"""The wire shape of a linkage code (符号), shared by every system that handles one.

The network issues codes (``simulator.network.codes``); intermediate servers check the codes
the network presents to them (``server.service_inbound``). Both must agree on the shape, and
neither may import the other, so the shape lives here.
"""

from __future__ import annotations

import re

CODE_CHARS = 20
# base32 without padding: 20 characters carry 100 bits, enough that no two people collide.
LINKAGE_CODE_RE = re.compile(rf"[A-Z2-7]{{{CODE_CHARS}}}")
