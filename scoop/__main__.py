"""``python -m scoop [flags] prog.py [args]``: see :mod:`scoop_core.cli`."""

from scoop_core.cli import main_module
from scoop_core.fork_server import finish

finish(main_module())
