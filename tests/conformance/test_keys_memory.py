"""The ``SubjectKeys`` conformance suite against ``InMemorySubjectKeys``."""

from __future__ import annotations

import pytest

from services.adapters.memory_keys import InMemorySubjectKeys
from tests.conformance.keys_suite import SubjectKeysSuite


class TestInMemorySubjectKeys(SubjectKeysSuite):
    @pytest.fixture
    def keys(self) -> InMemorySubjectKeys:
        return InMemorySubjectKeys()
