"""Fixtures shared by the tests."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
from helpers import TINY

from accel.logs import setup_logging
from accel.sampling.runtime import Runtime

setup_logging()

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime.load(TINY)


@pytest.fixture(scope="module")
def pack():
    """The pack imported by path, as ComfyUI does (module name = its directory path)."""
    name = str(ROOT)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[name])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    module = sys.modules[name]
    yield module
    importlib.import_module(f"{name}.accel.parallel.registry").REGISTRY.release()
