"""Fixtures shared by the printer test modules (a module's own fixture of the same name wins)."""
from __future__ import annotations

from typing import Iterator

import pytest

from printer.keys import PrinterKeys, load_or_create

from .test_printer_helpers import FakeContents


@pytest.fixture
def keys(tmp_path) -> PrinterKeys:  # type: ignore[no-untyped-def]
    return load_or_create(tmp_path / "printer", "printer-1", "P1")


@pytest.fixture
def cs(keys: PrinterKeys) -> Iterator[FakeContents]:
    fake = FakeContents(keys.sign_public)
    yield fake
    fake.close()
