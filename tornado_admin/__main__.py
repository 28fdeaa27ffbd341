"""`python -m tornado_admin` and the `tornado-admin` script."""

from __future__ import annotations

import sys

from tornado_admin.cli import main

if __name__ == "__main__":
    sys.exit(main())
