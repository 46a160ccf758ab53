"""Entry point for `python -m qwenvl_min.weights_convert`; see cli.py."""

import sys

from .cli import main

sys.exit(main())
