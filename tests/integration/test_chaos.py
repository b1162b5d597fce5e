"""`make chaos` in small: randomized batches under every fault at once, checked against ground truth."""

from __future__ import annotations

from batchdrain_local import chaos
from batchdrain_local.faults import FAULTS


def test_forty_randomized_batches_under_every_fault_end_with_one_right_alert_each():
    progress: list[tuple[int, int]] = []
    figures = chaos.run(batches=40, seed=20261123, progress=lambda ended, missed: progress.append((ended, missed)))

    injected = figures.injected
    assert set(injected) == set(FAULTS), f"faults that never struck: {set(FAULTS) - set(injected)}"
    assert set(figures.kinds) == set(chaos.KINDS), f"item kinds the run never had: {set(chaos.KINDS) - set(figures.kinds)}"
    redrives = injected["redrive"]
    assert (figures.alerts_expected, figures.alerts_received) == (40 + redrives, 40 + redrives), figures.problems
    assert (figures.missed, figures.duplicate, figures.premature) == (0, 0, 0), figures.problems
    assert (figures.items_lost, figures.items_double_counted) == (0, 0), figures.problems
    assert (figures.items_misreported, figures.items_falsely_failed) == (0, 0), figures.problems
    assert progress == [(ended, 0) for ended in range(1, 41)], "every batch reports its end, once"
