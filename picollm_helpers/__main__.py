"""`python -m picollm_helpers`: see picollm_helpers.cli."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
