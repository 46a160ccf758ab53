"""`python -m qwenvl_min.cli` = the `qwenvl-min` console script."""

import sys

from .main import main

sys.exit(main())
