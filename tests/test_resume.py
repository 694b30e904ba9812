"""Scheduled-job behaviour: checkpoints as commits, exact auto-resume, preemption signals.

Every run here is train_caltech.py as a subprocess with the bit-repeatable engine
settings (MXNET_ENGINE_TYPE=NaiveEngine, OMP_NUM_THREADS=1), on the 4-colour task
of tests/test_train.py: ResNet-20 from scratch, 3 epochs of 15 batches. An
interrupted run is compared with an unbroken one of the same command: the same
parameters (within 1e-5; measured: bit-identical), the same metrics. Every
process a test starts is waited for or killed by the test, within a time limit.
"""
import glob
import json
import os
import pickle
import random
import resource
import signal
import subprocess
import sys
import threading
import time

import mxnet as mx
import pytest

from common import checkpoint, cli
from tests import trainkit
from tests.trainkit import REPEATABLE, committed, manifests, metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "train_caltech.py")
EPOCHS = 3
ARGS = ["--mode", "scratch", "--lr", "0.01", "--mom", "0.9", "--wd", "1e-4", "--lr-step-epochs", "2",
        "--disp-batches", "1"]
LIMIT = 120  # seconds any one run may take


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-data")
    return trainkit.prepare_dataset(str(root), counts=(40,) * 4, train_per_class=30)


def command(data_dir, prefix, *extra, epochs=EPOCHS):
    args = trainkit.train_args(data_dir, str(prefix), *ARGS, *extra, epochs=epochs)
    at = args.index("--keep")  # trainkit keeps every epoch; these runs keep what a user's would
    del args[at:at + 2]
    return [sys.executable, SCRIPT, *map(str, args)]


def run(cmd, env=None, **kwargs):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=LIMIT,
                          env=dict(os.environ, **REPEATABLE, **(env or {})), **kwargs)


@pytest.fixture(scope="module")
def unbroken(data_dir, tmp_path_factory):
    """The reference: the same command, never interrupted."""
    prefix = tmp_path_factory.mktemp("unbroken") / "run"
    result = run(command(data_dir, prefix))
    assert result.returncode == 0, result.stderr
    return {"prefix": str(prefix), "final": result.stdout.strip().splitlines()[-1]}


def assert_same_run(prefix, reference):
    """Final parameters within 1e-5 and the same metrics (timing aside) as the reference."""
    trainkit.assert_same_run(prefix, reference, EPOCHS)


def resumed_from(prefix):
    """The checkpoints the reruns logged they resumed from, in order."""
    with open(f"{prefix}-train.log") as f:
        return [line.split("resumed from checkpoint ")[1].split(" ")[0] for line in f
                if "resumed from checkpoint" in line]


# ---------------------------------------------------------------- kill -9

def kill_when(cmd, ready, timeout=LIMIT):
    """Start cmd, SIGKILL it as soon as ready() is true (polled every 0.5 ms); its return code."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, **REPEATABLE))
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and not ready():
            if time.time() > deadline:
                raise AssertionError(f"{cmd} neither finished nor reached the kill point in {timeout} s")
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    return proc.returncode


def test_killed_at_any_moment_and_rerun_it_ends_like_an_unbroken_run(data_dir, unbroken, tmp_path):
    prefix = tmp_path / "run"
    cmd = command(data_dir, prefix, "--keep", "10")  # nothing deleted: every commit stays to be checked
    folder = str(tmp_path)
    started = time.time()
    moments = [
        ("right after epoch 1 is committed", lambda: committed(prefix) == [1]),
        ("while epoch 2's params are being written",
         lambda: bool(glob.glob(os.path.join(folder, ".run-0002.params.partial")))),
        ("while epoch 2's manifest is being written",
         lambda: bool(glob.glob(os.path.join(folder, ".run-0002.manifest.json.partial")))),
    ]
    rng = random.Random(7)
    moments += [(f"{delay:.2f} s into a rerun", lambda d=delay: time.time() - t0 > d)
                for delay in (rng.uniform(2.0, 5.0) for _ in range(3))]
    seen = {}
    for what, ready in moments:
        t0 = time.time()
        code = kill_when(cmd, ready)
        if code == 0:
            break  # it finished before that moment came: nothing left to interrupt
        assert code == -signal.SIGKILL, what
        seen.update(manifests(prefix))
    result = run(cmd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == unbroken["final"]
    assert_same_run(prefix, unbroken["prefix"])
    # A committed epoch is never trained again: its manifest (which a new commit of
    # it would replace, with a new time) is the one written before the kills.
    final = manifests(prefix)
    assert seen and {e: final[e] for e in seen} == seen
    assert len(resumed_from(prefix)) >= 1 and time.time() - started < 5 * LIMIT


# ---------------------------------------------------------------- signals

def stop_with(cmd, signum, after_line, env=None):
    """Start cmd, send `signum` once stderr shows `after_line`; (return code, seconds, stderr)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **REPEATABLE, **(env or {})))
    lines, seen = [], threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if after_line in line:
                seen.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(LIMIT), f"never saw {after_line!r}:\n{''.join(lines)}"
        sent = time.time()
        proc.send_signal(signum)
        code = proc.wait(timeout=30)
        seconds = time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
    reader.join(timeout=30)
    return code, seconds, "".join(lines)


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_epoch_commits_the_batch_and_the_same_command_resumes_exactly(
        data_dir, unbroken, tmp_path, signum, status):
    prefix = tmp_path / "run"
    cmd = command(data_dir, prefix)
    code, seconds, stderr = stop_with(cmd, signum, "Epoch[2] Batch [0-5]")
    assert code == status and seconds < 30, stderr
    assert f"train_caltech.py: {signal.Signals(signum).name}: stopped at epoch 2, batch " in stderr
    mid = checkpoint.read_manifest(str(prefix), checkpoint.RESUME)
    assert mid["epoch"] == 2 and mid["batch"] >= 6 and committed(prefix) == [1]
    result = run(cmd)
    assert result.returncode == 0, result.stderr
    assert f"(after batch {mid['batch']} of epoch 2)" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == unbroken["final"]
    assert_same_run(prefix, unbroken["prefix"])
    assert not os.path.exists(checkpoint.manifest_path(str(prefix), checkpoint.RESUME))  # superseded


def scontrol_stub(tmp_path, then=""):
    """An `scontrol` on PATH that records its arguments, one call per line, then runs `then`;
    (the environment that puts it on PATH, the file of calls)."""
    folder, calls = tmp_path / "bin", tmp_path / "scontrol-calls"
    folder.mkdir()
    stub = folder / "scontrol"
    stub.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n{then}\n")
    stub.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}, calls


@pytest.fixture
def stub_scontrol(tmp_path):
    return scontrol_stub(tmp_path)


@pytest.mark.parametrize("slurm,job", [({"SLURM_JOB_ID": "77"}, "77"),
                                       ({"SLURM_JOB_ID": "80", "SLURM_ARRAY_JOB_ID": "70",
                                         "SLURM_ARRAY_TASK_ID": "3"}, "70_3")], ids=["job", "array-task"])
def test_sigusr1_with_requeue_requeues_the_slurm_job_once(data_dir, tmp_path, stub_scontrol, slurm, job):
    path, calls = stub_scontrol
    prefix = tmp_path / "run"
    code, _, stderr = stop_with(command(data_dir, prefix, "--requeue", epochs=2), signal.SIGUSR1,
                                "Epoch[1] Batch [0-3]", env=dict(path, **slurm))
    assert code == 143, stderr
    assert calls.read_text().splitlines() == [f"requeue {job}"]
    assert checkpoint.read_manifest(str(prefix), checkpoint.RESUME)["epoch"] == 1


def test_the_sigterm_that_ends_a_requeued_job_is_not_a_second_signal(data_dir, tmp_path):
    """Slurm ends a job it requeues with SIGTERM, which can come before `scontrol requeue`
    has even returned (seen on a real Slurm: tests_slurm/): the run has committed its
    checkpoint and is stopping already, so it finishes as it would have."""
    path, calls = scontrol_stub(tmp_path, then="kill -TERM $PPID; sleep 0.5")  # $PPID: the run
    prefix = tmp_path / "run"
    code, _, stderr = stop_with(command(data_dir, prefix, "--requeue", epochs=2), signal.SIGUSR1,
                                "Epoch[1] Batch [0-3]", env=dict(path, SLURM_JOB_ID="9"))
    assert code == 143, stderr
    assert "second signal" not in stderr and "requeued Slurm job 9" in stderr, stderr
    assert "train_caltech.py: SIGUSR1: stopped at epoch 1, batch " in stderr
    assert calls.read_text().splitlines() == ["requeue 9"]
    assert checkpoint.read_manifest(str(prefix), checkpoint.RESUME)["epoch"] == 1


def test_sigusr1_without_requeue_only_stops(data_dir, tmp_path, stub_scontrol):
    path, calls = stub_scontrol
    code, _, stderr = stop_with(command(data_dir, tmp_path / "run", epochs=2), signal.SIGUSR1,
                                "Epoch[1] Batch [0-3]", env=dict(path, SLURM_JOB_ID="5"))
    assert code == 143, stderr
    assert not calls.exists()


def test_requeue_outside_slurm_is_one_line(data_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(command(data_dir, tmp_path / "out" / "run", "--requeue"), cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=LIMIT)
    assert result.returncode == 1
    assert result.stderr.strip() == ("train_caltech.py: error: --requeue: this process is not a Slurm job "
                                     "(no SLURM_JOB_ID); run it with sbatch, or leave --requeue out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- what a rerun finds

@pytest.fixture
def finished(data_dir, unbroken, tmp_path):
    """A copy of the unbroken run's folder, to damage."""
    import shutil
    folder = tmp_path / "copy"
    shutil.copytree(os.path.dirname(unbroken["prefix"]), folder)
    return folder / "run"


def test_a_finished_run_prints_its_final_line_again_and_touches_nothing(data_dir, unbroken, finished):
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(f"{finished}-*")}
    result = run(command(data_dir, finished))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == unbroken["final"]
    assert {p: os.stat(p).st_mtime_ns for p in glob.glob(f"{finished}-*")} == before


def flip_a_byte(path):
    with open(path, "r+b") as f:
        f.seek(-5, os.SEEK_END)
        byte = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(data_dir, unbroken, finished):
    flip_a_byte(checkpoint.params_path(str(finished), 3))
    result = run(command(data_dir, finished))
    assert result.returncode == 0, result.stderr
    assert f"{checkpoint.params_path(str(finished), 3)} is corrupt" in result.stderr
    assert "not resuming from epoch 3" in result.stderr
    assert os.path.basename(resumed_from(finished)[-1]) == "run-0002.params"
    assert_same_run(finished, unbroken["prefix"])


def test_only_states_a_verified_manifest_lists_are_unpickled(data_dir, unbroken, finished, tmp_path):
    """A .states file is a pickle: replaced by a hostile one, it must never be loaded."""
    marker = tmp_path / "unpickled"

    class Hostile:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    with open(checkpoint.states_path(str(finished), 3), "wb") as f:
        pickle.dump(Hostile(), f)
    result = run(command(data_dir, finished))
    assert result.returncode == 0, result.stderr
    assert f"{checkpoint.states_path(str(finished), 3)} is corrupt" in result.stderr
    assert not marker.exists()
    assert_same_run(finished, unbroken["prefix"])


@pytest.mark.parametrize("change,shown", [(["--network", "resnet-32"], "network: resnet-20 there, resnet-32 now"),
                                          (["--image-shape", "3,18,18"], "image_shape: [3, 16, 16] there")])
def test_a_checkpoint_of_another_run_is_refused_and_restart_moves_it_aside(data_dir, finished, change, shown):
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(f"{finished}-*")}
    cmd = command(data_dir, finished, *change, epochs=1)
    result = run(cmd)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("train_caltech.py")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0].startswith(f"train_caltech.py: error: --model-prefix {finished} holds a checkpoint of "
                                f"another run ({shown}")
    assert errors[0].endswith("pass --restart to start over there (its files are moved aside) or another "
                              "--model-prefix")
    assert {p: os.stat(p).st_mtime_ns for p in glob.glob(f"{finished}-*")} == before
    result = run(cmd + ["--restart"])
    assert result.returncode == 0, result.stderr
    [aside] = glob.glob(f"{finished}-before-restart-*")
    assert sorted(os.listdir(aside)) == sorted(os.path.basename(p) for p in before)
    assert committed(finished) == [1]


def test_checkpoint_files_without_a_manifest_are_not_overwritten(data_dir, tmp_path):
    prefix = tmp_path / "run"
    mx.model.save_checkpoint(str(prefix), 1, mx.sym.Variable("data"), {}, {})  # someone else's files
    result = run(command(data_dir, prefix, epochs=1))
    assert result.returncode == 1
    assert "holds checkpoint files (epochs 1) that no verified manifest vouches for" in result.stderr
    assert os.listdir(tmp_path) == ["run-symbol.json", "run-0001.params"] or \
        sorted(os.listdir(tmp_path)) == ["run-0001.params", "run-symbol.json"]


# ---------------------------------------------------------------- retention and failed saves

def test_retention_keeps_the_newest_and_the_best(data_dir, tmp_path):
    prefix = tmp_path / "run"
    # lr 0.1 without momentum here: the accuracy goes up and down (measured), so
    # the best epoch is not always the newest.
    cmd = command(data_dir, prefix, "--keep", "2", "--lr", "0.1", "--mom", "0", epochs=5)
    result = run(cmd)
    assert result.returncode == 0, result.stderr
    records = metrics(prefix)
    best = max(range(len(records)), key=lambda i: records[i]["val_acc"]) + 1  # the earliest of equals
    assert committed(prefix) == sorted({4, 5, best})
    assert checkpoint.saved_epochs(str(prefix)) == sorted({4, 5, best})
    with open(f"{prefix}-best.json") as f:
        assert json.load(f)["epoch"] == best


@pytest.mark.parametrize("keep", ["0", "1"])
def test_keep_below_two_is_one_line(data_dir, tmp_path, keep):
    result = run(command(data_dir, tmp_path / "run", "--keep", keep))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("train_caltech.py")]
    assert errors == [f"train_caltech.py: error: argument --keep: expected an integer >= 2, got {keep} "
                      f"(see --help)"]


@pytest.mark.parametrize("momentum", ["0.9", "0"])
def test_a_failed_save_stops_in_one_line_and_keeps_what_was_committed(data_dir, tmp_path, momentum):
    """`ulimit -f` below the size of a params file: the write fails (EFBIG). With momentum
    the optimizer state is as large as the params and fails first, as it is taken at the
    epoch's end; without, the params fail, in the background commit during epoch 3.
    Either way the line names the file."""
    prefix = tmp_path / "run"
    first = run(command(data_dir, prefix, "--mom", momentum, epochs=1))
    assert first.returncode == 0, first.stderr
    limit = os.path.getsize(checkpoint.params_path(str(prefix), 1)) // 2

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    result = run(command(data_dir, prefix, "--mom", momentum, epochs=3), preexec_fn=small_files)
    assert result.returncode == cli.EXIT["I/O"]
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    too_large = checkpoint.states_path if momentum != "0" else checkpoint.params_path
    reason = f"File too large ({too_large(str(prefix), 2)})"
    assert errors == [errors[-1]] and errors[0].startswith(
        f"train_caltech.py: error: cannot write the checkpoint of epoch 2: {reason}"), result.stderr
    assert "the checkpoints committed before are intact" in errors[0]
    assert committed(prefix) == [1]
    assert [r["epoch"] for r in metrics(prefix)] == [1, 2]  # epoch 3 stopped, without a result
    checkpoint.read_manifest(str(prefix), 1)  # still verifies
    assert not glob.glob(str(tmp_path / ".*.partial*"))
    again = run(command(data_dir, prefix, "--mom", momentum, epochs=2))  # with room again, it continues
    assert again.returncode == 0, again.stderr
    assert committed(prefix) == [1, 2]


class _Exited(Exception):
    pass


@pytest.fixture
def preemption(monkeypatch):
    """A Preemption whose immediate stop raises _Exited(status) instead of ending pytest."""
    from common.train import preempt

    def exit_now(status):
        raise _Exited(status)
    monkeypatch.setattr(preempt.os, "_exit", exit_now)
    monkeypatch.setattr(preempt.logging, "shutdown", lambda: None)
    clock = [100.0]
    monkeypatch.setattr(preempt.time, "monotonic", lambda: clock[0])
    return preempt.Preemption(lambda param: None), clock


def test_a_sigterm_repeated_at_once_is_one_request_and_a_later_one_stops_at_once(preemption):
    stops, clock = preemption
    stops._caught(signal.SIGTERM, None)
    clock[0] += 1.0
    stops._caught(signal.SIGTERM, None)  # slurmstepd's and srun's copy of one SIGTERM
    assert stops.signum == signal.SIGTERM
    clock[0] += 10.0
    with pytest.raises(_Exited) as exited:
        stops._caught(signal.SIGTERM, None)
    assert exited.value.args == (143,)


def test_a_second_ctrl_c_stops_at_once(preemption):
    stops, clock = preemption
    stops._caught(signal.SIGINT, None)
    clock[0] += 0.2
    with pytest.raises(_Exited) as exited:
        stops._caught(signal.SIGINT, None)
    assert exited.value.args == (130,)


def test_the_first_signal_after_the_other_workers_agreed_to_stop_is_not_a_second_one(preemption):
    from common.train import preempt
    stops, clock = preemption
    stops.agree = lambda flag: True  # another worker was signalled
    assert stops._stopping() and stops.signum == signal.SIGTERM
    stops._caught(signal.SIGTERM, None)  # this worker's own copy arrives late
    with pytest.raises(_Exited):
        stops._caught(signal.SIGINT, None)
    assert preempt.DUPLICATE_SECONDS == 5
