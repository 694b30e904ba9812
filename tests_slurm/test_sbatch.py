"""slurm/train.sbatch on a real Slurm: requeued, warned before its time limit, resumed.

Each test submits the script with a small CPU run (tests/trainkit.py's generated
4-class data, ResNet-20 from scratch, the bit-repeatable engine settings),
interrupts it the way a cluster does, waits for the job to come back and finish,
and compares its final parameters and metrics with an unbroken run of
train_caltech.py with the same arguments (within 1e-5). The arguments name no
device, so the script's own choice runs (--cpus 1: this node has no GPU), and
the script adds --requeue, which a run outside Slurm refuses.
"""
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests import trainkit
from tests.trainkit import REPEATABLE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "slurm", "train.sbatch")
EPOCHS = 4  # 150 batches of 8 each: 2.3 s on an idle 2-core machine, up to 4 s when it is busy
LONG_EPOCHS = 24  # 55 to 60 s on an idle machine: longer than the 40 s a warning may take (see below)
ARGS = ["--mode", "scratch", "--lr", "0.01", "--mom", "0.9", "--wd", "1e-4", "--lr-step-epochs", "2",
        "--disp-batches", "10"]
RUN_LIMIT = 200  # seconds for an unbroken run, or for a job to finish
HEADER = "train.sbatch: job "  # the line the script starts each run's output with
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-data")
    return trainkit.prepare_dataset(str(root), counts=(350,) * 4, train_per_class=300)


def train_args(data_dir, prefix, epochs):
    args = trainkit.train_args(data_dir, str(prefix), *ARGS, epochs=epochs)
    at = args.index("--cpus")  # the script chooses the device
    del args[at:at + 2]
    return args


class Unbroken:
    """train_caltech.py run directly, never interrupted: the reference. It trains in the
    background while the job does; result() waits for it and returns self (prefix, final)."""

    def __init__(self, data_dir, folder, epochs):
        self.prefix, self.final, self.stderr = str(folder / "run"), None, folder / "stderr.txt"
        cmd = [sys.executable, "train_caltech.py", *train_args(data_dir, self.prefix, epochs)]
        with open(self.stderr, "w") as stderr:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                         env=dict(os.environ, **REPEATABLE))

    def result(self):
        if self.final is None:
            out, _ = self.proc.communicate(timeout=RUN_LIMIT)
            assert self.proc.returncode == 0, self.stderr.read_text()
            self.final = out.strip().splitlines()[-1]
        return self


@pytest.fixture(scope="module")
def unbroken(data_dir, tmp_path_factory):
    """unbroken(epochs): the Unbroken run of that many epochs, started once."""
    started = {}

    def start(epochs):
        if epochs not in started:
            started[epochs] = Unbroken(data_dir, tmp_path_factory.mktemp(f"unbroken-{epochs}"), epochs)
        return started[epochs]
    yield start
    for run in started.values():
        if run.proc.poll() is None:
            run.proc.kill()
        run.proc.wait()


def directive(option):
    """The value of the script's `#SBATCH --OPTION=VALUE` line."""
    with open(SCRIPT) as f:
        [value] = [line.split("=", 1)[1].strip() for line in f if line.startswith(f"#SBATCH --{option}=")]
    return value


def warning():
    """The script's own warning without its time ('B:USR1' of 'B:USR1@90'), and the scancel
    options that send what Slurm sends for it: B: signals the batch shell only, and
    without it Slurm signals only the job's steps."""
    what = directive("signal").rpartition("@")[0]
    return what, [f"--signal={what.rpartition(':')[2]}"] + (["--batch"] if what.startswith("B:") else [])


def submit(slurm, jobs, args, *options):
    """sbatch slurm/train.sbatch from the repository root, in the bit-repeatable environment."""
    job = slurm.sbatch(*options, SCRIPT, *args, cwd=REPO, env=REPEATABLE)
    jobs.append(job)
    return job


def runs(path, header=HEADER):
    """The job's output file, one text per run (each begins with the script's header line)."""
    try:
        with open(path, errors="replace") as f:
            text = "\n" + f.read()
    except FileNotFoundError:
        return []
    return [header + part for part in text.split("\n" + header)[1:]]


def wait_for(ready, what, slurm, job, output, limit=RUN_LIMIT):
    """Poll ready() until true; fail once the job has ended without it, or after `limit` s."""
    deadline = time.time() + limit
    while not ready():
        state = slurm.job(job)
        ended = state.get("JobState", "gone") in FINISHED | {"gone"}
        if (ended and not ready()) or time.time() > deadline:
            why = f"the job ended ({state.get('JobState', 'gone')})" if ended else f"not within {limit} s"
            tail = "".join(runs(output))[-3000:]
            brief = {k: state.get(k) for k in ("JobState", "Reason", "Restarts", "ExitCode")}
            raise AssertionError(f"job {job}: no {what}: {why}; scontrol: {brief}\n{tail}")
        time.sleep(0.2)


def wait_finished(slurm, job, output):
    """The job's `scontrol show job` fields once it has ended for good."""
    wait_for(lambda: slurm.job(job).get("JobState") in FINISHED, "end", slurm, job, output)
    return slurm.job(job)


def assert_ended_like(reference, prefix, last_run, epochs):
    """The job's last run printed the unbroken run's final line; its parameters and metrics match."""
    reference.result()
    assert [line for line in last_run.splitlines() if line.startswith("final:")] == [reference.final]
    trainkit.assert_same_run(prefix, reference.prefix, epochs)


def test_requeued_by_the_scheduler_the_job_resumes_and_ends_like_an_unbroken_run(
        slurm, jobs, data_dir, unbroken, tmp_path):
    reference = unbroken(EPOCHS)
    prefix = tmp_path / "run"
    job = submit(slurm, jobs, train_args(data_dir, prefix, EPOCHS))
    out = os.path.join(REPO, "slurm", "logs", f"finetune-{job}.out")  # the script's own --output
    try:
        wait_for(lambda: "Epoch[2] Batch [" in "".join(runs(out)), "batch of epoch 2", slurm, job, out)
        slurm.run("scontrol", "requeue", job)  # what preemption (PreemptMode=REQUEUE) or an admin does
        wait_for(lambda: len(runs(out)) == 2, "second run", slurm, job, out)
        committed = trainkit.manifests(prefix)  # the first run has ended: what it committed
        end = wait_finished(slurm, job, out)
        first, second = runs(out)
    finally:
        if os.path.exists(out):
            shutil.move(out, tmp_path / os.path.basename(out))  # kept with the test's files
    assert end["JobState"] == "COMPLETED" and end["Restarts"] == "1", end
    assert "batch 8 on cpu(0)" in first  # the script chose the one CPU context
    assert "SIGTERM received" in first and "train_caltech.py: SIGTERM: stopped at epoch 2, batch " in first
    assert f"resumed from checkpoint {prefix}-resume.params (after batch " in second
    assert committed and {e: trainkit.manifests(prefix)[e] for e in committed} == committed  # none redone
    assert_ended_like(reference, prefix, second, EPOCHS)


def test_sigusr1_makes_the_job_requeue_itself_once_per_signal_and_resume(slurm, jobs, data_dir, unbroken,
                                                                         tmp_path):
    reference = unbroken(EPOCHS)
    prefix, out = tmp_path / "run", tmp_path / "job.out"
    job = submit(slurm, jobs, train_args(data_dir, prefix, EPOCHS), f"--output={out}")
    for run in (1, 2):
        wait_for(lambda: len(runs(out)) == run and "Batch [" in runs(out)[-1], f"training in run {run}",
                 slurm, job, out)
        # What the script's --signal=B:USR1@90 makes Slurm send before a time limit.
        slurm.run("scancel", *warning()[1], job)
        wait_for(lambda: len(runs(out)) == run + 1, f"run {run + 1}", slurm, job, out)
    end = wait_finished(slurm, job, out)
    parts = runs(out)
    assert end["JobState"] == "COMPLETED" and end["Restarts"] == "2" and len(parts) == 3, end
    assert [p.count("SIGUSR1 received") for p in parts] == [1, 1, 0]
    assert [p.count(f"requeued Slurm job {job}") for p in parts] == [1, 1, 0]
    assert all("resumed from checkpoint" in p for p in parts[1:])
    assert_ended_like(reference, prefix, parts[-1], EPOCHS)


def test_warned_by_its_time_limit_the_job_requeues_itself_and_ends_like_an_unbroken_run(
        slurm, jobs, data_dir, unbroken, tmp_path):
    reference = unbroken(LONG_EPOCHS)
    prefix, out = tmp_path / "run", tmp_path / "job.out"
    # The script's own warning, only sooner. slurmctld checks time limits every 30 s and
    # warns a job whose time left is at most the warning time + 30 s (22.05's
    # send_job_warn_signal): with a minute and a warning at 20 s, a run is warned at the
    # first check after 10 s, 10 to 40 s in, long after train_caltech.py has started.
    # Each requeued run gets a new minute, and a new warning.
    job = submit(slurm, jobs, train_args(data_dir, prefix, LONG_EPOCHS), "--time=1",
                 f"--signal={warning()[0]}@20", f"--output={out}")
    end = wait_finished(slurm, job, out)
    parts = runs(out)
    assert end["JobState"] == "COMPLETED" and len(parts) >= 2, end
    assert int(end["Restarts"]) == len(parts) - 1
    # Every run but the last was warned once and requeued the job once; the last one finished.
    assert [p.count("SIGUSR1 received") for p in parts] == [1] * (len(parts) - 1) + [0]
    assert [p.count(f"requeued Slurm job {job}") for p in parts] == [1] * (len(parts) - 1) + [0]
    assert "DUE TO TIME LIMIT" not in "".join(parts)
    assert_ended_like(reference, prefix, parts[-1], LONG_EPOCHS)


def test_a_warning_before_training_starts_is_lost_not_fatal(slurm, jobs, data_dir, unbroken, tmp_path):
    """Until train_caltech.py handles SIGUSR1, its default action would kill the job (no
    checkpoint, no requeue); the script has it ignored until then."""
    reference = unbroken(EPOCHS)
    prefix, out = tmp_path / "run", tmp_path / "job.out"
    job = submit(slurm, jobs, train_args(data_dir, prefix, EPOCHS), f"--output={out}")
    wait_for(lambda: runs(out), "start", slurm, job, out)
    slurm.run("scancel", *warning()[1], job)  # Python is still importing MXNet: seconds from its first batch
    end = wait_finished(slurm, job, out)
    [only] = runs(out)
    assert end["JobState"] == "COMPLETED" and end["Restarts"] == "0", end
    # Neither handled (that would requeue) nor fatal (FAILED): ignored.
    assert "SIGUSR1 received" not in only
    assert_ended_like(reference, prefix, only, EPOCHS)
