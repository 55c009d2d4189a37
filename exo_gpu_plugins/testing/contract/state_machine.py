"""Clause "state machine": random call sequences checked against a model (Hypothesis).

Hypothesis is imported when this clause runs, not when the kit is imported: the other clauses
need none of it."""

from __future__ import annotations

import contextlib

from exo_gpu_plugins.testing.contract._base import KitBase, clause
from exo_gpu_plugins.testing.contract._helpers import BackendFactory
from exo_gpu_plugins.testing.pytest_plugin import NO_DATABASE_KEY


class StateMachineContract(KitBase):
    """Random call sequences checked byte for byte against a model (Hypothesis)."""

    @clause("state machine")
    def test_state_machine(self, backend_factory: BackendFactory) -> None:
        from exo_gpu_plugins.testing.state_machine import (
            kit_settings,
            run_state_machine,
            scratch_storage,
        )

        config = self._request.config
        writes_nothing = config.stash.get(NO_DATABASE_KEY, False)
        with scratch_storage() if writes_nothing else contextlib.nullcontext():
            run_state_machine(
                backend_factory,
                device_id=self.chosen_device_id(),
                settings=kit_settings(
                    config.getoption("exo_gpu_examples", None),
                    config.getoption("exo_gpu_steps", None),
                    database=not writes_nothing,
                ),
            )
