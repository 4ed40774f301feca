"""Exit status: the launcher exits with the root program's own status.

Run with:  python -m scoop -n 2 examples/exit_status.py 7 ; echo $?   (prints 7)
"""

import sys

from scoop import futures

if __name__ == "__main__":
    status = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    doubled = list(futures.map(lambda x: 2 * x, range(5)))
    assert doubled == [0, 2, 4, 6, 8]
    print(f"map gave {doubled}; exiting with status {status}")
    sys.exit(status)
