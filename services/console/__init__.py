"""The auditor's console: read-only pages over the audit use cases (``app``), with
signed session cookies (``sessions``)."""

from services.console.app import Console, ConsoleServer

__all__ = ["Console", "ConsoleServer"]
