"""`python -m codash ...` is the `codash` command."""

import sys

from codash.cli import main

sys.exit(main())
