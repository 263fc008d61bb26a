"""Point your own client at `linkage world up`: register a person and query JPS for a pension.

Run `linkage world up` in one terminal, then `python examples/query_person.py` in another. The
client presents the certificate of Sakai's late-stage elderly medical care system
(`bs.sakai.kouki`) from the world's PKI directory; the manifest world.json says where everything is.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from linkage.rpc import Security
from linkage.v1 import unified_address_pb2, unified_address_pb2_grpc


async def main(world_dir: Path) -> None:
    manifest = json.loads((world_dir / "world.json").read_text())
    sakai = next(o for o in manifest["organizations"] if o["code"] == "sakai")
    pki = Path(manifest["pki_dir"]) if manifest["pki_dir"] else None
    async with Security(pki, "bs.sakai.kouki").channel(sakai["unified_address"]) as channel:
        kouki = unified_address_pb2_grpc.UnifiedAddressServiceStub(channel)
        answer = await kouki.QueryPerson(
            unified_address_pb2.QueryPersonRequest(
                query_id="example-1",
                procedure="table2:82",
                provider="jps",
                data_items=["pension_benefit"],
                address_number=sys.argv[2] if len(sys.argv) > 2 else "K-1",
            ),
            timeout=30,
        )
        print(answer.result)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "data/world")))
