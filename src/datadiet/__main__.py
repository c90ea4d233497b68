"""`python -m datadiet` is the `datadiet` command."""

import sys

from datadiet.cli import main

sys.exit(main())
