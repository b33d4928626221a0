"""Fixtures shared by the tests."""

from __future__ import annotations

import pytest
from helpers import TINY

from accel.logs import setup_logging
from accel.sampling.runtime import Runtime

setup_logging()


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime.load(TINY)
