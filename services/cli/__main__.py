"""``python -m services.cli``: the ``consent-ledger`` command, from a checkout."""

import sys

try:
    from services.cli.main import main
except KeyboardInterrupt:  # Ctrl-C while the command itself loads: main() says the same
    print("consent-ledger: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
