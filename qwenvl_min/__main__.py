"""`python -m qwenvl_min ...` (what torchrun's `-m qwenvl_min` runs): the `qwenvl-min` console script."""

import sys

from .cli.main import main
from .parallel.launch import shutdown

code = main()
shutdown()  # leave a torchrun job's process group cleanly (nothing to do in one process)
sys.exit(code)
