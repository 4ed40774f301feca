"""``python -m scoop [flags] prog.py [args]``: see :mod:`scoop_core.cli`."""

import sys

from scoop_core.cli import main_module

sys.exit(main_module())
