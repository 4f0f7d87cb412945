"""The run machinery fine-tuning and pretraining share: the loss plot of a run's log."""

import pytest

from fastbert.tasks.run import plot_losses


def test_loss_plot_from_the_log(tmp_path):
    pytest.importorskip("matplotlib")
    log = [{"loss": 2.0 - 0.1 * i, "step": 10 * i} for i in range(1, 10)]
    log += [{"eval_accuracy": 0.5 + 0.1 * i, "eval_runtime": 1.0, "step": 30 * i} for i in range(1, 4)]
    path = tmp_path / "loss.png"
    assert plot_losses(log, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
