"""`python -m batchdrain_cli`: the same as the `batchdrain` command."""

import sys

from batchdrain_cli.cli import main

sys.exit(main())
