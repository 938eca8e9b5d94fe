"""``python -m devstack``: the demo (`devstack.demo.main`); ``--help`` lists its options."""

from __future__ import annotations

import sys

from devstack.demo import main

if __name__ == "__main__":
    sys.exit(main())
