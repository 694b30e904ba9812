"""The epoch-end writes in the background: in order, failures raised in the training
thread, what is written taken when submitted, and finished before a stop."""
import logging
import signal
import threading
import types

import mxnet as mx
import numpy as np
import pytest

from common import checkpoint, cli
from common.train import background, callbacks, linear, preempt


def test_writes_run_in_order_in_another_thread_and_join_waits_for_them():
    done, threads, release = [], set(), threading.Event()

    def write(n):
        release.wait(10)
        threads.add(threading.get_ident())
        done.append(n)
    with background.Writer() as writer:
        for n in range(5):
            writer.submit(lambda n=n: write(n))
        assert done == []  # the training thread went on
        release.set()
        writer.join()
        assert done == [0, 1, 2, 3, 4]
    assert threading.get_ident() not in threads


def test_a_failed_write_stops_training_after_the_batch_it_failed_in():
    failed = threading.Event()

    def fail():
        failed.set()
        raise cli.WriteFailed("cannot write the checkpoint of epoch 2: disk full")
    writer = background.Writer()
    writer.submit(fail)
    failed.wait(10)
    writer._pending[0].exception(10)  # finished
    with pytest.raises(cli.WriteFailed, match="epoch 2: disk full"):
        writer.batch_end(None)
    writer.batch_end(None)  # reported once
    writer.__exit__(None, None, None)


@pytest.mark.parametrize("stop", [callbacks.StopTraining("no better"), preempt.Preempted("SIGTERM", 143)])
def test_a_deliberate_stop_does_not_hide_a_failed_write(stop):
    def fail():
        raise cli.WriteFailed("cannot write the checkpoint of epoch 3")
    with pytest.raises(cli.WriteFailed, match="epoch 3"):
        with background.Writer() as writer:
            writer.submit(fail)
            raise stop


def test_another_error_stays_the_cause_and_the_failed_write_is_logged(caplog):
    def fail():
        raise cli.WriteFailed("cannot write the checkpoint of epoch 3")
    with caplog.at_level(logging.ERROR), pytest.raises(callbacks.Diverged, match="diverged"):
        with background.Writer() as writer:
            writer.submit(fail)
            raise callbacks.Diverged("epoch 4: the run diverged")
    assert "an epoch-end write failed as well: cannot write the checkpoint of epoch 3" in caplog.text


def test_a_commit_saves_the_parameters_of_its_epoch_not_those_of_the_next(tmp_path):
    """The next epoch updates the arrays while the commit waits for the writer's thread."""
    data = mx.sym.Variable("data")
    symbol = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(data, num_hidden=2, name="fc"), name="softmax")
    arg = {"fc_weight": mx.nd.ones((2, 3)), "fc_bias": mx.nd.zeros((2,))}
    end = callbacks.EpochEnd(epoch=1, module=linear.FittedHead(symbol), arg_params=arg, aux_params={},
                             record={"epoch": 1}, val={"acc": 0.5, "loss": 1.0})
    prefix, release = str(tmp_path / "run"), threading.Event()
    with background.Writer() as writer:
        writer.submit(lambda: release.wait(10))  # the thread is busy: the commit waits
        callbacks.CommitCheckpoint(prefix, "run-id", keep=2, writer=writer)(end)
        arg["fc_weight"][:] = 7.0  # what the next epoch's updates do
        arg["fc_bias"] += 1.0
        release.set()
    saved = checkpoint.load_checkpoint(prefix, 1)[1]
    assert np.array_equal(saved["fc_weight"].asnumpy(), np.ones((2, 3)))
    assert np.array_equal(saved["fc_bias"].asnumpy(), np.zeros(2))
    assert checkpoint.read_manifest(prefix, 1)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_stop_finishes_the_epoch_end_writes_first():
    """Before the mid-epoch commit (the epoch's commit would remove it) and before a stop
    at an epoch's end (which may requeue the job, and Slurm then kills it)."""
    order = []
    stops = preempt.Preemption(lambda param: order.append("mid-epoch commit"),
                               settle=lambda: order.append("settle"))
    stops.signum = signal.SIGTERM
    with pytest.raises(preempt.Preempted):
        stops.batch_end(types.SimpleNamespace(epoch=2, nbatch=3))
    assert order == ["settle", "mid-epoch commit"]
    order.clear()
    with pytest.raises(preempt.Preempted, match="the end of epoch 2"):
        stops.epoch_end(types.SimpleNamespace(epoch=2))
    assert order == ["settle"]


class _Log:
    def __init__(self):
        self.records, self.plot_path = [], "curve.png"


@pytest.mark.parametrize("spacing,drawn", [(0, [[1], [1, 2], [1, 2, 3]]), (1e9, [[1, 2, 3]]),
                                           (1e-9, [[1], [1, 2], [1, 2, 3]])])
def test_the_curve_is_drawn_as_often_as_its_spacing_allows_and_the_last_epoch_always(monkeypatch, spacing,
                                                                                     drawn):
    """Spacing 1e9: no drawing is due during the run; its end draws the curve."""
    calls = []
    monkeypatch.setattr(callbacks.report, "plot_curves", lambda records, path: calls.append(
        [r["epoch"] for r in records]))
    metrics_log = _Log()
    with background.Writer() as writer:
        plot = callbacks.CurvePlot(metrics_log, writer, spacing)
        writer.at_close(plot.finish)
        for epoch in (1, 2, 3):
            metrics_log.records.append({"epoch": epoch})
            plot(None)
            writer.join()
    assert calls == drawn


def test_queued_commits_that_retention_would_delete_are_skipped(tmp_path, monkeypatch):
    """Five epochs end while the writer is busy; keep 2: the newest two and the best are
    committed, as retention would leave them, and the others are never written."""
    from common.train import resume
    written, commit_files = [], checkpoint.commit
    monkeypatch.setattr(checkpoint, "commit", lambda prefix, tag, **kw: written.append(tag) or commit_files(
        prefix, tag, **kw))
    data = mx.sym.Variable("data")
    symbol = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(data, num_hidden=2, name="fc"), name="softmax")
    prefix, release = str(tmp_path / "run"), threading.Event()
    with background.Writer() as writer:
        writer.submit(lambda: release.wait(10))
        commit = callbacks.CommitCheckpoint(prefix, "run-id", keep=2, writer=writer)
        for epoch, acc in enumerate([0.5, 0.9, 0.6, 0.9, 0.8], start=1):
            arg = {"fc_weight": mx.nd.full((2, 3), epoch), "fc_bias": mx.nd.zeros((2,))}
            commit(callbacks.EpochEnd(epoch=epoch, module=linear.FittedHead(symbol), arg_params=arg, aux_params={},
                                      record={"epoch": epoch}, val={"acc": acc, "loss": 1.0}))
        release.set()
    assert written == [2, 4, 5]  # 2: the earliest of the best; 1 and 3 never written
    assert sorted(checkpoint.committed_epochs(prefix)) == [2, 4, 5]
    assert checkpoint.saved_epochs(prefix) == [2, 4, 5]
    assert resume.retain(prefix, 2) == 2
    assert checkpoint.load_checkpoint(prefix, 4)[1]["fc_weight"].asnumpy().max() == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_commit_is_not_skipped_while_fewer_than_keep_later_epochs_are_queued(tmp_path):
    commit = callbacks.CommitCheckpoint(str(tmp_path / "run"), "run-id", keep=2, writer=background.Synchronous())
    commit._submitted = [(1, 0.5), (2, 0.6)]
    assert not commit.superseded(1) and not commit.superseded(2)
    commit._submitted.append((3, 0.7))
    assert commit.superseded(1) and not commit.superseded(2)
