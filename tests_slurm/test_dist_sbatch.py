"""slurm/train-dist.sbatch on a real Slurm: launch.py --launcher slurm, requeued, resumed.

The job runs 2 workers and 1 server as two srun steps of one allocation (this
cluster has one node: `--nodes=1 --ntasks=2`), on 127.0.0.1 (INTERFACE=lo), with
the bit-repeatable engine settings. Requeued mid-epoch by `scontrol requeue` (what
preemption does: Slurm's SIGTERM goes to every process of the job at once), it
comes back, resumes and ends with the parameters of an unbroken job of the same
command run by `launch.py --launcher local` (within 1e-5).
"""
import os
import shutil
import subprocess
import sys

from tests import trainkit
from tests.trainkit import REPEATABLE
from tests_slurm.test_sbatch import RUN_LIMIT, runs, wait_finished, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "slurm", "train-dist.sbatch")
EPOCHS = 4
ARGS = ["--mode", "scratch", "--lr", "0.01", "--mom", "0.9", "--wd", "1e-4", "--lr-step-epochs", "2",
        "--disp-batches", "10"]


def train_args(data_dir, prefix):
    args = trainkit.train_args(data_dir, str(prefix), *ARGS, epochs=EPOCHS)
    at = args.index("--cpus")  # the script chooses the device and the kvstore
    del args[at:at + 2]
    return args


def unbroken_job(data_dir, folder):
    """The reference: the same training command under the local launcher, never interrupted."""
    prefix = folder / "run"
    cmd = [sys.executable, "launch.py", "-n", "2", "-s", "1", "--launcher", "local", sys.executable,
           "train_caltech.py", "--kv-store", "dist_sync", "--cpus", "1", *train_args(data_dir, prefix)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=RUN_LIMIT,
                            env=dict(os.environ, **REPEATABLE))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return prefix


def test_a_dist_job_requeued_by_slurm_resumes_and_ends_like_an_unbroken_one(slurm, jobs, tmp_path,
                                                                            tmp_path_factory):
    data_dir = trainkit.prepare_dataset(str(tmp_path_factory.mktemp("dist-data")), counts=(200,) * 4,
                                        train_per_class=160)
    reference = unbroken_job(data_dir, tmp_path / "unbroken")
    prefix, out = tmp_path / "run", tmp_path / "job.out"
    job = slurm.sbatch("--nodes=1", "--ntasks=2", "--ntasks-per-node=2", f"--output={out}", SCRIPT,
                       *train_args(data_dir, prefix), cwd=REPO, env=dict(REPEATABLE, INTERFACE="lo"))
    jobs.append(job)
    try:
        wait_for(lambda: "Epoch[2] Batch [" in "".join(runs_of(out)), "batch of epoch 2", slurm, job, out)
        slurm.run("scontrol", "requeue", job)
        wait_for(lambda: len(runs_of(out)) == 2, "second run", slurm, job, out)
        end = wait_finished(slurm, job, out)
        first, second = runs_of(out)
    finally:
        if os.path.exists(out):
            shutil.copy(out, tmp_path / "job-kept.out")
    assert end["JobState"] == "COMPLETED" and end["Restarts"] == "1", end
    assert "workers (srun)" in first and "servers (srun)" in first
    assert first.count("train_caltech.py: SIGTERM: stopped at epoch 2, batch ") == 2, first[-3000:]
    assert f"resumed from checkpoint {prefix}-resume.params (after batch " in second
    trainkit.assert_same_run(prefix, reference, EPOCHS)


def runs_of(path):
    """The job's output, one text per run."""
    return runs(str(path), header="train-dist.sbatch: job ")
