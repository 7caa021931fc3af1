"""The ``AccessLog`` conformance suite against ``InMemoryAccessLog``."""

from __future__ import annotations

import pytest

from services.adapters.memory_access import InMemoryAccessLog
from tests.conformance.access_log_suite import AccessLogSuite


class TestInMemoryAccessLog(AccessLogSuite):
    @pytest.fixture
    def access_log(self) -> InMemoryAccessLog:
        return InMemoryAccessLog()
