import sys

from .cli import main

# Guarded: a spawned or fork-server DataLoader worker imports the main module again.
if __name__ == "__main__":
    sys.exit(main())
