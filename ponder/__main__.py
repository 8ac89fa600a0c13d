"""`python -m ponder VERB ...` (what `torchrun ... -m ponder train RECIPE` runs in each process)."""

import sys

from ponder.cli import main

if __name__ == "__main__":
    sys.exit(main())
