"""``python -m voxray.cli`` (the RayJob entrypoints and tests use it)."""

import sys

from voxray.cli import main

sys.exit(main())
