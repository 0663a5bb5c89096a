"""``python -m accord`` runs the CLI."""

import sys

from accord.cli import main

sys.exit(main())
