"""Fixtures for the schedule-rule tests."""

from __future__ import annotations

import pytest
import tvm

from tvmcompress.targets import resolve_target


@pytest.fixture(scope="session")
def host_target() -> tvm.target.Target:
    """This machine's target, as the ``host`` preset resolves it."""
    return resolve_target("host").tvm_target


@pytest.fixture(scope="session")
def avx2_target() -> tvm.target.Target:
    """The AVX2 preset: for tests that check 8-lane code, whatever this host's vector width
    (it runs on any x86-64-v3 CPU, AVX-512 ones included)."""
    return resolve_target("x86-64-avx2").tvm_target
