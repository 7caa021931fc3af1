"""The ``consent-ledger`` command: ``services.cli.main`` parses and dispatches; the
commands it does not run itself are modules of this package (the audit tools in
``audit/``)."""
