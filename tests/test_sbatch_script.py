"""slurm/train.sbatch's own choices, without Slurm: the devices it adds and its guards.

The script runs here as sbatch would run it (bash, in the repository), with PYTHON
naming a stand-in that prints the arguments it was given. The real Slurm tests
(tests_slurm/, `make test-slurm`) run it on a cluster.
"""
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "slurm", "train.sbatch")


@pytest.fixture
def python_stub(tmp_path):
    stub = tmp_path / "python"
    stub.write_text('#!/bin/sh\necho "$@"\necho "OMP_NUM_THREADS=$OMP_NUM_THREADS"\n')
    stub.chmod(0o755)
    return str(stub)


def run_script(python_stub, *args, cwd=REPO, **env):
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("SLURM_") and k not in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
    return subprocess.run(["bash", SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=30,
                          env=dict(clean, PYTHON=python_stub, SLURM_JOB_ID="42", **env))


@pytest.mark.parametrize("env,args,devices", [
    ({}, [], "--cpus 1"),
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, [], "--gpus 0,1"),  # MXNet numbers the visible GPUs from 0
    ({"CUDA_VISIBLE_DEVICES": "5"}, [], "--gpus 0"),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, ["--cpus", "2"], ""),  # the arguments' choice wins
    ({}, ["--gpus=1"], ""),
], ids=["no-gpu", "two-gpus", "one-gpu", "cpus-given", "gpus-given"])
def test_devices_come_from_slurm_unless_the_arguments_name_them(python_stub, env, args, devices):
    result = run_script(python_stub, *args, "--num-epochs", "3", **env)
    assert result.returncode == 0, result.stderr
    header, command, threads = result.stdout.splitlines()
    assert header.startswith("train.sbatch: job 42 run 1 on ")
    assert command.split() == ["train_caltech.py", *devices.split(), "--requeue", *args, "--num-epochs", "3"]


def test_omp_threads_are_the_nodes_cores_unless_set(python_stub):
    assert run_script(python_stub, SLURM_CPUS_ON_NODE="8").stdout.splitlines()[-1] == "OMP_NUM_THREADS=8"
    assert run_script(python_stub, SLURM_CPUS_ON_NODE="8", OMP_NUM_THREADS="1").stdout.splitlines()[-1] == \
        "OMP_NUM_THREADS=1"


def test_submitted_from_another_folder_it_says_so_in_one_line(python_stub, tmp_path):
    result = run_script(python_stub, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"train.sbatch: error: no train_caltech.py in {tmp_path}; submit from the "
                             f"repository root or pass --chdir\n")
