"""``python -m apc`` -> :func:`apc.cli.main`."""

import sys

from apc.cli import main

sys.exit(main())
