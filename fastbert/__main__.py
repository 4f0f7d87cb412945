"""`python -m fastbert ...` (also what `torchrun -m fastbert encode ...` runs): the `fastbert` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
