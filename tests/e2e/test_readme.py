"""The README's Python example runs, unchanged, against a real service."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from pathlib import Path

import pytest

from services.bootstrap import Runtime
from tests.e2e.harness import TOKENS, service_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    match = re.search(
        r"<!-- readme-example -->\s*```python\n(.*?)```", README.read_text(), re.DOTALL
    )
    assert match, "README lost its tested example"
    return match.group(1)


async def test_the_readme_python_example_runs(tmp_path, postgres_dsn):
    runtime = Runtime(service_settings(tmp_path, postgres_dsn, kafka=None))
    await runtime.start()
    try:
        out = io.StringIO()
        scope = {"ADDRESS": runtime.address, "TOKEN": TOKENS["admin"][0]}

        def run() -> None:
            with contextlib.redirect_stdout(out):
                exec(compile(readme_example(), str(README), "exec"), scope)

        await asyncio.to_thread(run)
    finally:
        await runtime.stop()
    assert out.getvalue().strip() == "OBLIGATION_IDENTIFY_SENDER"
