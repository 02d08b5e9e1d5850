"""``python -m ad_fast`` runs the ``ad-fast`` command line."""

import sys

from .cli import main

sys.exit(main())
