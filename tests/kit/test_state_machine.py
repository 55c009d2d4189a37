"""The Hypothesis state machine: clean on the host backend, and it finds a divergence on a broken one."""

from __future__ import annotations

import unittest

import pytest

from exo_gpu_plugins.host.backend import HostBackend
from exo_gpu_plugins.testing.state_machine import (
    BackendStateMachine,
    kit_settings,
    make_state_machine,
    run_state_machine,
)

from .broken_backends import ForwardCopy

# A unittest TestCase from the factory: pytest collects it like any other test class.
TestHostMachine = make_state_machine(HostBackend, settings=kit_settings(30, 15, database=False))


def test_make_state_machine_returns_a_test_case() -> None:
    assert issubclass(TestHostMachine, unittest.TestCase)


def test_finds_and_shrinks_a_divergence() -> None:
    with pytest.raises(AssertionError, match="diverges from the model") as caught:
        run_state_machine(ForwardCopy, settings=kit_settings(200, 25, database=False))
    # Shrunk to a tiny allocation: the message names the byte and the allocation's size.
    assert "-byte allocation" in str(caught.value)


def test_unbound_machine_says_how_to_bind() -> None:
    with pytest.raises(TypeError, match="bind"):
        BackendStateMachine()


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXO_GPU_KIT_EXAMPLES", "7")
    monkeypatch.setenv("EXO_GPU_KIT_STEPS", "10000")
    chosen = kit_settings()
    assert chosen.max_examples == 7
    assert chosen.stateful_step_count == 10000
    assert chosen.deadline is None
    assert kit_settings(3, 4).max_examples == 3  # arguments win over the environment


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXO_GPU_KIT_EXAMPLES", raising=False)
    monkeypatch.delenv("EXO_GPU_KIT_STEPS", raising=False)
    assert kit_settings().max_examples == 200


def test_bad_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXO_GPU_KIT_EXAMPLES", "many")
    with pytest.raises(ValueError, match="EXO_GPU_KIT_EXAMPLES"):
        kit_settings()
