"""launch.py and the dist kvstore: real jobs of 2 workers + 1 server on 127.0.0.1.

Every job here is `launch.py -n 2 -s 1 --launcher local train_caltech.py ...
--kv-store dist_sync` (or the same through a stub ssh/srun) on the 4-colour task
of tests/test_resume.py, with the bit-repeatable engine settings. A job's
processes are read from the launcher's "started ... (pid N)" lines; every test
checks they are all gone when it ends, and kills what is left if not.
"""
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from common import checkpoint, records
from common.cluster import hosts, remote, watchdog
from common.train import sampling
from tests import trainkit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH, TRAIN = os.path.join(REPO, "launch.py"), os.path.join(REPO, "train_caltech.py")
EPOCHS = 3
REPEATABLE = {"MXNET_ENGINE_TYPE": "NaiveEngine", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
ARGS = ["--mode", "scratch", "--lr", "0.01", "--mom", "0.9", "--wd", "1e-4", "--lr-step-epochs", "2",
        "--disp-batches", "1"]
LIMIT = 120  # seconds any one job may take
ENDS_WITHIN = 60  # the bound for a job to end after a process dies


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch-data")
    return trainkit.prepare_dataset(str(root), counts=(40,) * 4, train_per_class=30)


def train_command(data_dir, prefix, *extra, batch=8, kv="dist_sync"):
    args = trainkit.train_args(data_dir, str(prefix), *ARGS, "--batch-size", str(batch), *extra, epochs=EPOCHS)
    at = args.index("--keep")
    del args[at:at + 2]
    return [sys.executable, TRAIN, *map(str, args)] + (["--kv-store", kv] if kv else [])


def job_command(command, *launch_args, workers=2):
    return [sys.executable, LAUNCH, "-n", str(workers), "-s", "1", "--launcher", "local", "--grace-seconds", "3",
            *launch_args, *command]


class Job:
    """A launcher process with its output in a file; kill() ends whatever of it is left."""

    def __init__(self, cmd, log_path, env=None):
        self.log_path = log_path
        self.out = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.out, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **REPEATABLE, **(env or {})))

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_for(self, pattern, timeout=LIMIT):
        deadline = time.time() + timeout
        while not re.search(pattern, self.text()):
            assert self.proc.poll() is None, f"the job ended before {pattern!r}:\n{self.text()}"
            assert time.time() < deadline, f"no {pattern!r} within {timeout} s:\n{self.text()}"
            time.sleep(0.05)

    def pids(self):
        """{role name: pid} of the processes the launcher started."""
        return {m[0]: int(m[1]) for m in re.findall(r"started (.+?) \(pid (\d+)\)", self.text())}

    def wait(self, timeout=LIMIT):
        return self.proc.wait(timeout=timeout)

    def kill(self):
        for pid in list(self.pids().values()) + [self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        self.out.close()


@pytest.fixture
def jobs(tmp_path):
    started = []

    def start(cmd, env=None):
        job = Job(cmd, tmp_path / f"job{len(started)}.log", env)
        started.append(job)
        return job
    yield start
    for job in started:
        job.kill()


def alive(pid):
    """True if `pid` runs (a zombie has ended: only its parent has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_all_gone(pids, within=10):
    deadline = time.time() + within
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "processes of the job outlived it"


def run_job(cmd, log_path, env=None):
    job = Job(cmd, log_path, env)
    try:
        code = job.wait()
        assert_all_gone(job.pids().values())
        return code, job.text()
    finally:
        job.kill()


def params(prefix, epoch=EPOCHS):
    return {k: v.asnumpy() for k, v in mx.nd.load(checkpoint.params_path(str(prefix), epoch)).items()}


def final_acc(text):
    return float(re.findall(r"final: val_acc=([0-9.]+)", text)[-1])


# ------------------------------------------------------------------ learning

def test_two_workers_and_a_server_learn_like_one_process_with_the_same_total_batch(data_dir, tmp_path):
    """3 seeds: 2 workers x 8 images against one process on 2 contexts x 8 (same BatchNorm batches)."""
    dist_acc, one_acc = [], []
    for seed in ("0", "1", "2"):
        prefix = tmp_path / f"dist{seed}" / "run"
        code, text = run_job(job_command(train_command(data_dir, prefix, "--seed", seed)), tmp_path / f"d{seed}")
        assert code == 0, text
        dist_acc.append(final_acc(text))
        one = subprocess.run(train_command(data_dir, tmp_path / f"one{seed}" / "run", "--seed", seed, "--cpus",
                                           "2", batch=16, kv=None),
                             cwd=REPO, capture_output=True, text=True, timeout=LIMIT, env=dict(os.environ, **REPEATABLE))
        assert one.returncode == 0, one.stderr
        one_acc.append(final_acc(one.stdout))
        # Only rank 0 writes: one line per epoch, every epoch committed once.
        with open(f"{prefix}-metrics.jsonl") as f:
            assert [json.loads(line)["epoch"] for line in f] == [1, 2, 3]
        assert text.count("committed ") == EPOCHS
        # Each worker trains on half the images each epoch, the same number of batches.
        assert len(re.findall(r"worker [01] of 2: 60 of the 120 training images each epoch", text)) == 2
        last = {w: max(map(int, re.findall(rf"\[worker {w}\] \S+ INFO Epoch\[1\] Batch \[0-(\d+)\]", text)))
                for w in "01"}
        assert last == {"0": 7, "1": 7}, text  # 60 images: batches 0..7, the last one padded
    assert np.mean(dist_acc) >= 0.85 and abs(np.mean(dist_acc) - np.mean(one_acc)) <= 0.1, (dist_acc, one_acc)


def test_each_epoch_gives_each_worker_its_own_images(data_dir):
    train = records.check_record_set(os.path.join(data_dir, "caltech256-train.rec"), 4)
    parts = {}
    for seed in (11, 12):
        for rank in (0, 1, 2):
            with sampling.EpochParts(train, rank=rank, num_workers=3) as shards:
                part = shards.epoch(seed)
                keys = [int(line.split()[0]) for line in open(part.idx)]
                labels = records.read_labels(part.rec, part.idx)
                assert labels.tolist() == part.labels.tolist()  # the copied records are whole
                parts[seed, rank] = keys
            assert not os.path.exists(shards.folder)
    for seed in (11, 12):
        keys = [parts[seed, r] for r in range(3)]
        assert [len(k) for k in keys] == [40] * 3 and len(set().union(*keys)) == 120
        assert len(set(keys[0]) & set(keys[1])) == 0
    assert parts[11, 0] != parts[12, 0]
    # The same seed gives the same part (an exact resume).
    with sampling.EpochParts(train, rank=0, num_workers=3) as shards:
        assert [int(line.split()[0]) for line in open(shards.epoch(11).idx)] == parts[11, 0]


# ------------------------------------------------------------------ signals and failures

def listening_addresses(pids):
    """The local addresses of the TCP sockets the processes `pids` listen on."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address = fields[1].split(":")[0]
                found.append(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


@pytest.fixture(scope="module")
def unbroken(data_dir, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("unbroken-job") / "run"
    code, text = run_job(job_command(train_command(data_dir, prefix)), str(prefix) + ".log")
    assert code == 0, text
    return prefix


def test_sigterm_to_the_job_commits_and_the_same_command_resumes_exactly(data_dir, unbroken, tmp_path, jobs):
    prefix = tmp_path / "run"
    cmd = job_command(train_command(data_dir, prefix))
    job = jobs(cmd)
    job.wait_for(r"\[worker \d\] \S+ INFO Epoch\[2\] Batch \[0-1\]")
    pids = job.pids()
    # Everything binds to 127.0.0.1: scheduler, server and workers.
    addresses = listening_addresses(pids.values())
    assert addresses and set(addresses) == {"127.0.0.1"}, addresses
    sent = time.time()
    job.proc.send_signal(signal.SIGTERM)
    assert job.wait(timeout=30) == 143, job.text()
    assert time.time() - sent < 30
    assert_all_gone(pids.values())
    mid = checkpoint.read_manifest(str(prefix), checkpoint.RESUME)
    assert mid["epoch"] == 2 and mid["batch"] >= 2, job.text()
    # Every worker stopped after the same batch.
    stops = re.findall(r"stopped at epoch 2, batch (\d+)", job.text())
    assert len(stops) == 2 and len(set(stops)) == 1 and int(stops[0]) == mid["batch"], job.text()
    code, text = run_job(cmd, tmp_path / "rerun.log")
    assert code == 0, text
    assert f"(after batch {mid['batch']} of epoch 2)" in text
    ours, theirs = params(prefix), params(unbroken)
    assert sorted(ours) == sorted(theirs)
    for name in theirs:  # BatchNorm statistics too: each worker resumed with its own
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-5, rtol=0, err_msg=name)


def test_a_signal_to_one_worker_stops_every_worker_after_the_same_batch(data_dir, tmp_path, jobs):
    prefix = tmp_path / "run"
    job = jobs(job_command(train_command(data_dir, prefix)))
    job.wait_for(r"\[worker \d\] \S+ INFO Epoch\[2\] Batch \[0-1\]")
    pids = job.pids()
    os.kill(pids["worker 1"], signal.SIGTERM)  # as a scheduler might, on one node only
    assert job.wait(timeout=30) == 143, job.text()
    stops = re.findall(r"stopped at epoch 2, batch (\d+)", job.text())
    assert len(stops) == 2 and len(set(stops)) == 1, job.text()
    assert "another worker received a stop signal" in job.text()
    assert checkpoint.read_manifest(str(prefix), checkpoint.RESUME)["batch"] == int(stops[0])
    assert_all_gone(pids.values())


def test_a_killed_worker_ends_every_process_of_the_job(data_dir, tmp_path, jobs):
    job = jobs(job_command(train_command(data_dir, tmp_path / "run")))
    job.wait_for(r"Epoch\[1\] Batch \[0-3\]")
    pids = job.pids()
    killed = time.time()
    os.kill(pids["worker 1"], signal.SIGKILL)
    code = job.wait(timeout=ENDS_WITHIN)
    assert code == 137 and time.time() - killed < ENDS_WITHIN, job.text()
    assert "worker 1 (pid" in job.text() and "was killed by SIGKILL" in job.text()
    assert_all_gone(pids.values())


def test_a_stalled_worker_trips_the_watchdog_and_the_job_ends(data_dir, tmp_path, jobs):
    job = jobs(job_command(train_command(data_dir, tmp_path / "run"), "--watchdog-seconds", "4"))
    job.wait_for(r"Epoch\[1\] Batch \[0-3\]")
    pids = job.pids()
    stalled = time.time()
    os.kill(pids["worker 0"], signal.SIGSTOP)  # alive, but no progress: its peer waits on it forever
    code = job.wait(timeout=ENDS_WITHIN)
    assert code == watchdog.EXIT_STATUS and time.time() - stalled < ENDS_WITHIN, job.text()
    assert "no training progress for" in job.text()
    assert_all_gone(pids.values())


def test_a_killed_launcher_takes_its_job_with_it(data_dir, tmp_path, jobs):
    job = jobs(job_command(train_command(data_dir, tmp_path / "run")))
    job.wait_for(r"Epoch\[1\] Batch \[0-3\]")
    pids = job.pids()
    job.proc.kill()
    job.wait(timeout=30)
    assert_all_gone(pids.values())


# ------------------------------------------------------------------ early stopping

# train_caltech.py with its validation accuracy scripted per epoch (the best is epoch 2;
# 3 and 4 do not beat it), the same on every worker; a server or scheduler ends inside
# MXNet's import, as in the script itself.
SCRIPTED_TRAIN = """
import runpy, sys
sys.path.insert(0, {repo!r})
from common.cluster import watchdog
watchdog.guard_process()
import mxnet
from common import evaluate
script, real, seen = {{1: 0.5, 2: 0.75, 3: 0.5, 4: 0.75, 5: 1.0}}, evaluate.evaluate_set, []

def scripted(*args, **kwargs):
    result = real(*args, **kwargs)
    seen.append(len(seen) + 1)
    result.figures["acc"] = script[len(seen)]
    return result
evaluate.evaluate_set = scripted
sys.argv = [{train!r}, *sys.argv[1:]]
runpy.run_path({train!r}, run_name="__main__")
"""


def test_early_stopping_stops_every_worker_after_the_same_epoch(data_dir, tmp_path):
    wrapper = tmp_path / "scripted_train.py"
    wrapper.write_text(SCRIPTED_TRAIN.format(repo=REPO, train=TRAIN))
    prefix = tmp_path / "run"
    command = train_command(data_dir, prefix, "--early-stopping", "2")
    command[1] = str(wrapper)
    command[command.index("--num-epochs") + 1] = "6"
    code, text = run_job(job_command(command), tmp_path / "job.log")
    assert code == 0, text
    # Both workers stop after epoch 4: neither is left waiting on the other's pushes.
    assert len(re.findall(r"\[worker [01]\] .*training stopped after epoch 4: --early-stopping 2", text)) == 2, text
    with open(f"{prefix}-metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2, 3, 4]
    with open(f"{prefix}-best.json") as f:
        assert json.load(f)["epoch"] == 2
    assert "best_epoch=2 best_val_acc=0.7500" in text


# ------------------------------------------------------------------ environment, launchers

PRINT_ENV = [sys.executable, "-c", "import os; print('ENV', os.environ['DMLC_ROLE'], os.environ.get('FOO'), "
             "os.environ.get('DMLC_NODE_HOST'), os.environ.get('FINETUNE_WATCHDOG_SECONDS'))"]


def env_lines(text):
    return sorted(re.findall(r"\[(\w+) \d\] ENV (.*)", text))


def test_env_worker_and_env_server_reach_only_their_processes(tmp_path):
    code, text = run_job([sys.executable, LAUNCH, "-n", "2", "-s", "1", "--launcher", "local", "--env-worker",
                          "FOO:for workers", "--env-server", "FOO:server:side", *PRINT_ENV], tmp_path / "env.log")
    assert code == 0, text
    assert env_lines(text) == [("server", "server server:side 127.0.0.1 None"),
                               ("worker", "worker for workers 127.0.0.1 600"),
                               ("worker", "worker for workers 127.0.0.1 600")], text


def write_stub(folder, name, body):
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_the_ssh_launcher_runs_each_role_on_its_host_in_the_folder(data_dir, tmp_path):
    """A stub ssh runs the remote command here: the quoting, env, host and folder are real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # ssh [-o X]... -p PORT HOST COMMAND: record the host and port, run COMMAND.
    write_stub(bin_dir, "ssh", 'while [ "$1" = -o ]; do shift 2; done\n'
                               'echo "ssh to $3 port $2" >> "$SSH_CALLS"; exec bash -c "$4"\n')
    hostfile = tmp_path / "hosts"
    hostfile.write_text("127.0.0.1:2222\n# a comment\n127.0.0.1 slots=4\n")
    prefix = tmp_path / "run"
    cmd = [sys.executable, LAUNCH, "-n", "2", "-s", "1", "-H", str(hostfile), "--launcher", "ssh",
           "--host", "127.0.0.1", *train_command(data_dir, prefix)]
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SSH_CALLS": str(tmp_path / "calls")}
    code, text = run_job(cmd, tmp_path / "ssh.log", env)
    assert code == 0, text
    # MXNet's assignment: the server first, then round robin over the hosts.
    assert sorted(open(tmp_path / "calls").read().splitlines()) == [
        "ssh to 127.0.0.1 port 22", "ssh to 127.0.0.1 port 2222", "ssh to 127.0.0.1 port 2222"]
    assert final_acc(text) > 0 and EPOCHS in checkpoint.committed_epochs(str(prefix))


def test_the_slurm_launcher_runs_one_srun_step_per_kind(data_dir, tmp_path):
    """A stub srun starts --ntasks copies here, as srun does on the allocation's nodes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_stub(bin_dir, "srun", 'echo "$@" >> "$SRUN_CALLS"\nn=1\nwhile [[ "$1" == --* ]]; do\n'
                                '  [[ "$1" == --ntasks=* ]] && n=${1#--ntasks=}; shift; done\n'
                                'for i in $(seq 1 "$n"); do SLURM_PROCID=$((i-1)) "$@" & done\nwait\n')
    prefix = tmp_path / "run"
    cmd = [sys.executable, LAUNCH, "-n", "2", "-s", "1", "--launcher", "slurm", "--host", "127.0.0.1",
           "--interface", "lo", *train_command(data_dir, prefix)]
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SRUN_CALLS": str(tmp_path / "calls"),
           "SLURM_JOB_ID": "42"}
    code, text = run_job(cmd, tmp_path / "srun.log", env)
    assert code == 0, text
    calls = open(tmp_path / "calls").read().splitlines()
    assert sorted(c.split(" ", 3)[2] for c in calls) == ["--ntasks=1", "--ntasks=2"]
    assert "committed " in text and final_acc(text) > 0


MPIRUN = r"""
[ "$1" = --version ] && { echo "mpirun (Open MPI) 4.1.4"; exit 0; }
printf "%s\n" "$*" >> "$CALLS"; n=1; envs=()
while [[ "$1" == -* ]]; do
  case "$1" in -n) n=$2; shift 2;; -x) envs+=("$2"); shift 2;; --hostfile) shift 2;; *) shift;; esac
done
for i in $(seq 1 "$n"); do env "${envs[@]}" OMPI_COMM_WORLD_RANK=$((i-1)) "$@" & done; wait
"""
# qsub -sync y -b y -cwd -V -t 1-N -N NAME -v K=V,... COMMAND: N array tasks here.
QSUB = r"""
printf "%s\n" "$*" >> "$CALLS"; n=1; vars=""
while [[ "$1" == -* ]]; do
  case "$1" in -t) n=${2#1-}; shift 2;; -v) vars=$2; shift 2;; -sync|-b|-N) shift 2;; *) shift;; esac
done
IFS=, read -ra envs <<< "$vars"
for i in $(seq 1 "$n"); do env "${envs[@]}" SGE_TASK_ID=$i "$@" & done; wait
"""


@pytest.mark.parametrize("launcher,stub", [("mpi", ("mpirun", MPIRUN)), ("sge", ("qsub", QSUB))])
def test_the_mpi_and_sge_launchers_run_one_submission_per_kind(data_dir, tmp_path, launcher, stub):
    """Stubs of mpirun and qsub start their copies here, with the environment passed as they pass it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_stub(bin_dir, *stub)
    prefix = tmp_path / "run"
    cmd = [sys.executable, LAUNCH, "-n", "2", "-s", "1", "--launcher", launcher, "--host", "127.0.0.1",
           "--interface", "lo", "--env-worker", "OMP_NUM_THREADS:1", *train_command(data_dir, prefix)]
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls")}
    code, text = run_job(cmd, tmp_path / f"{launcher}.log", env)
    assert code == 0, text
    calls = open(tmp_path / "calls").read().splitlines()
    assert len(calls) == 2 and all("DMLC_INTERFACE=lo" in c for c in calls), calls
    assert sum("OMP_NUM_THREADS=1" in c for c in calls) == 1  # the workers' submission only
    assert final_acc(text) > 0 and EPOCHS in checkpoint.committed_epochs(str(prefix))


@pytest.mark.parametrize("argv,message", [
    ([], "give the command to run after the options"),
    (["--launcher", "ssh", "true"], "--launcher ssh needs -H HOSTFILE"),
    (["--launcher", "slurm", "true"], "--launcher slurm runs inside a Slurm allocation"),
    (["--launcher", "yarn", "true"], "--launcher yarn: MXNet 1.9.1's wheel ships dmlc_tracker without"),
    (["--env-worker", "OMP_NUM_THREADS=2", "true"], "--env-worker 'OMP_NUM_THREADS=2': expected NAME:value"),
    (["--interface", "nosuch0", "true"], "no such network interface; valid: lo"),
    (["--host", "no.such.host.invalid", "true"], "--host no.such.host.invalid: not an IPv4 address"),
    (["--launcher", "ssh", "-H", "/nonexistent/hosts", "true"], "-H /nonexistent/hosts: cannot read it"),
    (["--env", "NO_SUCH_VARIABLE_HERE", "true"], "--env NO_SUCH_VARIABLE_HERE: no such variable is set here"),
], ids=["no-command", "ssh-no-hosts", "slurm-outside", "yarn", "env-pair", "interface", "host", "hostfile",
        "env-unset"])
def test_launcher_misuse_is_one_line(argv, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run([sys.executable, LAUNCH, "-n", "2", "--launcher", "local", *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_launched_worker_refuses_a_local_kvstore_and_a_dist_one_needs_the_launcher(data_dir, tmp_path):
    cmd = train_command(data_dir, tmp_path / "run", kv="device")
    launched = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, DMLC_ROLE="worker"))
    assert launched.returncode == 1 and "valid: dist_sync, dist_device_sync" in launched.stderr
    assert launched.stderr.count("\n") == 1, launched.stderr
    alone = subprocess.run(train_command(data_dir, tmp_path / "run"), cwd=REPO, capture_output=True, text=True,
                           timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("DMLC_")})
    assert alone.returncode == 1 and "needs the launcher (python launch.py" in alone.stderr
    assert not os.path.exists(tmp_path / "run-args.json")


def test_a_process_started_over_ssh_ends_when_its_channel_closes(tmp_path):
    """A server waiting for a scheduler that never comes: closing its stdin ends it."""
    port = hosts.free_port("127.0.0.1")
    env = dict(os.environ, DMLC_ROLE="server", DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT=str(port),
               DMLC_NUM_WORKER="1", DMLC_NUM_SERVER="1", DMLC_NODE_HOST="127.0.0.1", **{watchdog.EOF_VAR: "1"})
    proc = subprocess.Popen([sys.executable, TRAIN, "--kv-store", "dist_sync"], cwd=REPO, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(3)
        assert proc.poll() is None  # still waiting for its scheduler
        proc.stdin.close()
        assert proc.wait(timeout=20) == watchdog.EXIT_STATUS
        assert b"the launcher's connection closed" in proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


# ------------------------------------------------------------------ pure pieces

def test_ssh_command_quotes_what_the_remote_shell_reads(tmp_path):
    folder = tmp_path / "my dir"
    folder.mkdir()
    command = [sys.executable, "-c", "import os, sys; print(sys.argv[1:], os.getcwd(), os.environ['FOO'])",
               "1 2", "it's"]
    argv = remote.ssh_command("node1", "2200", {"FOO": "a b'c", "DMLC_ROLE": "worker"}, str(folder), command)
    assert argv[:8] == ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes", "-p", "2200", "node1"]
    # What the remote login shell does with the last argument:
    out = subprocess.run(["bash", "-c", argv[8]], capture_output=True, text=True, timeout=30)
    assert out.stdout == f"['1 2', \"it's\"] {folder} a b'c\n", out.stderr


def test_read_hostfile_and_env_pairs(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("10.0.0.1\n10.0.0.2:2022 slots=8\n\n# all\n")
    assert hosts.read_hostfile(str(path)) == [("10.0.0.1", "22"), ("10.0.0.2", "2022")]
    assert hosts.env_pairs(["A:1", "B_2:x:y", "C:"], "--env") == {"A": "1", "B_2": "x:y", "C": ""}
    assert hosts.scheduler_address("local") == "127.0.0.1"
    assert hosts.scheduler_address("ssh", interface="lo") == "127.0.0.1"
