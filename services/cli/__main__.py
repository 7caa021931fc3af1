"""``python -m services.cli``: the ``consent-ledger`` command, from a checkout."""

import sys

from services.cli.main import main

sys.exit(main())
