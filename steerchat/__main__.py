"""`python -m steerchat`: the same command line as the `steerchat` console script."""

import sys

from steerchat.cli.main import main

sys.exit(main())
