"""The ``ConsentView`` conformance suite against ``InMemoryConsentView``."""

from __future__ import annotations

import pytest

from services.adapters.memory_view import InMemoryConsentView
from tests.conformance.view_suite import ConsentViewSuite


class TestInMemoryConsentView(ConsentViewSuite):
    @pytest.fixture
    def view(self) -> InMemoryConsentView:
        return InMemoryConsentView()
