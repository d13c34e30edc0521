"""``python -m rps`` runs the ``rps`` command line."""

import sys

from rps.cli import main

sys.exit(main())
