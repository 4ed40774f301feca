"""``python -m scoop_core``: the ``scoop`` command."""

from scoop_core.cli import main
from scoop_core.fork_server import finish

finish(main())
