"""A real single-node Slurm for tests_slurm/: munged, slurmctld and slurmd of its own.

`make test-slurm` installs Debian's slurm-wlm (22.05) and munge; Cluster writes a
minimal configuration into a fresh folder and starts the three daemons as root.
It shares nothing with a system Slurm or munge: key, socket, state, spool, logs
and configuration live in that folder, the ports are free ones, and SLURM_CONF
in Cluster.env points every client (sbatch, scontrol, and the `scontrol
requeue` of train_caltech.py inside a job, which inherits it) at this cluster.

The daemons run in the foreground as children of this process, each with
PR_SET_PDEATHSIG, so that none outlives it even if it is killed; stop() cancels
the jobs, waits for them to end, stops the daemons and removes the folder.
"""
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

START_LIMIT = 30  # seconds for the node to come up idle
COMMAND_LIMIT = 30  # seconds for one client command
_PR_SET_PDEATHSIG = 1
_MARK = "FINETUNE_TEST_SLURM"  # in the daemons' environment (and so slurmstepd's): whose they are

CONFIG = """\
ClusterName=finetune-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default
# 120 s); 5 s keeps a requeue test short.
AuthInfo=socket={root}/munge/socket,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
# No cgroups here: processes are tracked by their parents, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
# SIGKILL 5 s after SIGTERM (default 30): a job that ignores the stop does not hold up a test.
KillWait=5
# A finished job stays visible to scontrol for a minute: long enough to read its end state.
MinJobAge=60
# The main scheduler every second, not every minute: a requeued job starts when it may.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def free_ports(count):
    """`count` distinct ports nothing listens on now (all bound at once, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_line():
    """This machine as slurmd sees it ('NodeName=vm CPUs=2 ... RealMemory=24105'): a node
    configured with more than that would be drained."""
    first = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True,
                           timeout=COMMAND_LIMIT).stdout.splitlines()[0]
    return first, first.split()[0].partition("=")[2]


def _die_with_parent():
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Cluster:
    """start() it, use env (or run/sbatch/job), stop() it; a context manager too."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="finetune-slurm-")
        self.conf = os.path.join(self.root, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        self.daemons = []  # (name, Popen), in start order

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()  # what did start, stops
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        self._write_config()
        self._spawn("munged", ["munged", "-F", f"--socket={self.root}/munge/socket",
                               f"--key-file={self.root}/munge/munge.key", f"--pid-file={self.root}/munged.pid",
                               f"--log-file={self.root}/log/munged.log", f"--seed-file={self.root}/munge/seed"])
        self._wait(lambda: os.path.exists(f"{self.root}/munge/socket"), "munged's socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", self.conf])
        self._spawn("slurmd", ["slurmd", "-D", "-f", self.conf, "-N", self.node])
        self._wait(lambda: self._node_state() == "idle", f"node {self.node} to come up idle")

    def _write_config(self):
        line, self.node = node_line()
        for folder in ("munge", "state", "spool", "log"):
            os.makedirs(os.path.join(self.root, folder))
        # munged wants its socket's folders open to everyone, and its key private.
        os.chmod(self.root, 0o755)
        os.chmod(os.path.join(self.root, "munge"), 0o755)
        key = os.path.join(self.root, "munge", "munge.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(os.urandom(1024))
        with open(self.conf, "w") as f:
            ctld_port, slurmd_port = free_ports(2)
            f.write(CONFIG.format(root=self.root, node=self.node, node_line=line,
                                  ctld_port=ctld_port, slurmd_port=slurmd_port))

    def _spawn(self, name, cmd):
        log = open(os.path.join(self.root, "log", f"{name}.stderr"), "wb")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(self.env, **{_MARK: self.root}), preexec_fn=_die_with_parent,
                                start_new_session=True)  # not in the group `timeout` signals: stop() ends them
        log.close()
        self.daemons.append((name, proc))

    def _node_state(self):
        result = subprocess.run(["sinfo", "-h", "-n", self.node, "-o", "%T"], env=self.env,
                                capture_output=True, text=True, timeout=COMMAND_LIMIT)
        return result.stdout.strip()

    def _wait(self, ready, what, limit=START_LIMIT):
        deadline = time.time() + limit
        while not ready():
            dead = [name for name, proc in self.daemons if proc.poll() is not None]
            if dead or time.time() > deadline:
                why = f"{dead[0]} exited" if dead else f"not within {limit} s"
                raise RuntimeError(f"test Slurm: no {what} ({why}); the daemons' logs:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines=15):
        """The last lines of every daemon log, for an error message."""
        parts = []
        for name in sorted(os.listdir(os.path.join(self.root, "log"))):
            with open(os.path.join(self.root, "log", name), errors="replace") as f:
                parts.append(f"--- {name}\n" + "".join(f.readlines()[-lines:]))
        return "\n".join(parts)

    # ------------------------------------------------------------ clients

    def run(self, *cmd, cwd=None, env=None):
        """A client command against this cluster; its stdout. A failure is an AssertionError."""
        result = subprocess.run(cmd, cwd=cwd, env=dict(self.env, **(env or {})), capture_output=True,
                                text=True, timeout=COMMAND_LIMIT)
        assert result.returncode == 0, f"{' '.join(cmd)}: exit {result.returncode}: {result.stderr.strip()}"
        return result.stdout

    def sbatch(self, *args, cwd=None, env=None):
        """Submit; the job id."""
        return self.run("sbatch", "--parsable", *args, cwd=cwd, env=env).strip().split(";")[0]

    def job(self, job_id):
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...); {} once it is gone."""
        result = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=self.env, capture_output=True,
                                text=True, timeout=COMMAND_LIMIT)
        return dict(field.partition("=")[::2] for field in result.stdout.split()) if result.returncode == 0 else {}

    def cancel(self, *job_ids):
        if job_ids:
            subprocess.run(["scancel", *job_ids], env=self.env, capture_output=True, timeout=COMMAND_LIMIT)

    # ------------------------------------------------------------ stop

    def stop(self):
        """Cancel every job and wait for it to end, stop the daemons, remove the folder."""
        if any(name == "slurmctld" and proc.poll() is None for name, proc in self.daemons):
            self._cancel_all()
        for _, proc in reversed(self.daemons):
            _end(proc)
        self.daemons = []
        _kill_leftovers(self.root, self.conf)
        shutil.rmtree(self.root, ignore_errors=True)

    def _cancel_all(self, limit=60):
        try:
            ids = self.run("squeue", "-h", "-o", "%i").split()
            self.cancel(*ids)
            deadline = time.time() + limit
            while self.run("squeue", "-h", "-o", "%i").split() and time.time() < deadline:
                time.sleep(0.5)
        except (AssertionError, subprocess.TimeoutExpired):
            pass  # a controller that does not answer: the daemons are stopped all the same


def _end(proc, grace=15):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _kill_leftovers(root, conf):
    """SIGKILL what the daemons left: a slurmstepd (it carries the daemons' mark) or a job's
    process (SLURM_JOB_ID and this cluster's SLURM_CONF) that outlived them. Only when
    something went wrong is there any."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(item.partition(b"=")[::2] for item in f.read().split(b"\0"))
        except OSError:
            continue  # gone, or not ours to read
        ours = env.get(_MARK.encode()) == root.encode()
        job = b"SLURM_JOB_ID" in env and env.get(b"SLURM_CONF") == conf.encode()
        if (ours or job) and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
