"""`python -m digitserve.cli`: the same as the `digitserve` command."""

import sys

from digitserve.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
