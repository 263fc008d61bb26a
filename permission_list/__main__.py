"""``python -m permission_list ...``: the same commands as ``linkage permissions ...``."""

import sys

from permission_list.cli import main

sys.exit(main(sys.argv[1:]))
