"""``python -m scoop_core``: the ``scoop`` command."""

import sys

from scoop_core.cli import main

sys.exit(main())
