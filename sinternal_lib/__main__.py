"""`python -m sinternal_lib ...`: see sinternal_lib/cli.py."""

import sys

from .cli import main

sys.exit(main())
