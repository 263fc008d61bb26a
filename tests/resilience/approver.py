"""A platform replica whose reviewer approves one held provision: a process the tests kill.

Run as ``python approver.py SERVE-ARGS... -- TENANT PERMIT_ID STAFF_ID``. It starts the platform
exactly as ``linkage serve server SERVE-ARGS`` does (same database, same data directory: a
replica), approves the held provision through the review queue (``server.review.Review``, the
domain call ``ReviewService.ApproveHeldProvision`` wraps), prints ``delivered`` or
``not-delivered`` and exits. A test points its ``--network`` at a blackholed proxy, so the
approval commits and then waits on the delivery: the moment to SIGKILL it.
"""

from __future__ import annotations

import asyncio
import sys

from linkage import serve


async def approve(serve_args: list[str], tenant: str, permit_id: str, staff_id: str) -> int:
    args = serve.build_parser().parse_args(["server", *serve_args])
    app = await serve.start_system(args)
    try:
        delivered = await app.review.approve(tenant, permit_id, staff_id)
    finally:
        await app.close()
    print("delivered" if delivered else "not-delivered", flush=True)
    return 0


def main(argv: list[str]) -> int:
    split = argv.index("--")
    tenant, permit_id, staff_id = argv[split + 1 :]
    return asyncio.run(approve(argv[:split], tenant, permit_id, staff_id))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
