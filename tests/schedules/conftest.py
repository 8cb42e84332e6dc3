"""Fixtures for the schedule-rule tests."""

from __future__ import annotations

import pytest
import tvm

from tvmcompress.targets import resolve_target


@pytest.fixture(scope="session")
def host_target() -> tvm.target.Target:
    """This machine's target, as the ``host`` preset resolves it."""
    return resolve_target("host").tvm_target
