"""`python -m taskservice` runs the same command line as `taskservice`."""

import sys

from taskservice.cli import main

sys.exit(main())
