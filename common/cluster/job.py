"""The processes of a distributed job, supervised: a failed one ends the job, none outlives it.

MXNet 1.9.1's launcher starts each process in a daemon thread and waits for the
scheduler only: when a worker dies, the others block forever in a push or pull
that can no longer complete, and the launcher with them. Here every process
(the scheduler, each server, each worker, or the ssh/srun/mpirun client that
runs it elsewhere) is a child in its own process group, watched by one loop:

- a process that fails ends the job: every other one gets SIGTERM, then SIGKILL
  after `grace` seconds (a worker blocked in MXNet's engine never runs its
  Python signal handler), and the job exits with the failed one's status;
- a worker that stops on a preemption signal (130, 143) gives the others
  `stop_seconds` to stop too (rank 0 commits its checkpoint meanwhile);
- SIGTERM, SIGINT or SIGUSR1 to the launcher goes to every worker, which stop
  together after one batch (common.train.dist), within `stop_seconds`;
- when every worker has finished, servers and scheduler get `grace` seconds to
  exit on their own;
- children die with the launcher (PR_SET_PDEATHSIG), even if it is SIGKILLed.
"""
import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

PREEMPTED = (130, 143)  # a worker stopped by a signal, after committing (common.train.preempt)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
_POLL = 0.2  # seconds between looks at the processes
_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass
class Role:
    """One process of the job. name: 'worker 0', 'servers (srun)', 'scheduler'; kind:
    'worker', 'server' or 'scheduler' (an srun or mpirun running all workers is a
    worker); argv: the command (for a remote role, the ssh, srun, mpirun or qsub
    command); env: its whole environment."""
    name: str
    kind: str
    argv: list
    env: dict


def status_of(returncode):
    """A Popen returncode as a shell would report it: -9 -> 137."""
    return 128 - returncode if returncode < 0 else returncode


def describe(returncode):
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


class Job:
    """Start roles with start(), then wait() for the job's exit status."""

    def __init__(self, *, grace=10.0, stop_seconds=30.0, out=None):
        self.grace, self.stop_seconds = grace, stop_seconds
        self.out = out or sys.stdout.buffer
        self.procs, self._signals, self._lock = [], [], threading.Lock()
        self._readers = []

    def start(self, role):
        """Start `role` in its own process group; its output lines get '[name] ' in front."""
        # Popen from the main thread only: PR_SET_PDEATHSIG fires when the creating thread ends.
        proc = subprocess.Popen(role.argv, env=role.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with(os.getpid()))
        proc.role = role
        self.procs.append(proc)
        reader = threading.Thread(target=self._relay, args=(proc,), daemon=True)
        reader.start()
        self._readers.append(reader)
        log.info("started %s (pid %d): %s", role.name, proc.pid, " ".join(role.argv))
        return proc

    def _relay(self, proc):
        tag = f"[{proc.role.name}] ".encode()
        for line in iter(proc.stdout.readline, b""):
            with self._lock:
                self.out.write(tag + line)
                self.out.flush()

    def wait(self):
        """Supervise until the job ends; returns its exit status (0: every worker finished)."""
        previous = {s: signal.signal(s, self._caught) for s in FORWARDED}
        status = 1
        try:
            status = self._supervise()
            return status
        finally:
            self._end_all(patient=status == 0)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for reader in self._readers:
                reader.join(timeout=2)

    def _supervise(self):
        deadline = None  # set once the workers were asked to stop
        while True:
            deadline = self._forward_signals(deadline)
            failed = self._failed()
            if failed is not None:
                return failed
            workers = [p for p in self.procs if p.role.kind == "worker"]
            ended = [p.returncode for p in workers if p.poll() is not None]
            if len(ended) == len(workers):
                return self._workers_done(ended)
            if deadline is None and (ended or any(p.poll() == 0 for p in self.procs)):
                # a worker stopped on a signal, or the servers are done: the rest follow soon
                deadline = time.monotonic() + self.stop_seconds
            if deadline is not None and time.monotonic() > deadline:
                log.error("the workers did not stop within %.0f s of the stop request: ending the job",
                          self.stop_seconds)
                return 143
            time.sleep(_POLL)

    def _caught(self, signum, frame):
        # Passed on at once, not at the next poll: the workers stop after the batch they are in.
        for proc in self.procs:
            if proc.role.kind == "worker" and proc.returncode is None:
                _signal_group(proc, signum)
        self._signals.append(signum)

    def _forward_signals(self, deadline):
        while self._signals:
            signum = self._signals.pop(0)
            log.warning("%s received: passed to every worker", signal.Signals(signum).name)
            deadline = deadline or time.monotonic() + self.stop_seconds
        return deadline

    def _failed(self):
        """The job's status if a process failed.

        Servers and the scheduler exit 0 once the workers have said goodbye, a moment
        before the workers themselves exit: not a failure, but a deadline for the
        workers (_supervise). Any other status, or being killed, is.
        """
        for proc in self.procs:
            code = proc.poll()
            if code is None or code == 0 or code in PREEMPTED and proc.role.kind == "worker":
                continue
            log.error("%s (pid %d) %s: ending every process of the job", proc.role.name, proc.pid,
                      describe(code))
            return status_of(code) or 1
        return None

    def _workers_done(self, codes):
        stopped = [c for c in codes if c]
        if stopped:
            log.warning("the workers stopped on a signal (status %d); the same command resumes", stopped[0])
            return stopped[0]
        log.info("every worker finished")
        return 0

    def _end_all(self, patient):
        """Workers still running get SIGTERM, then SIGKILL after `grace` seconds; servers
        and the scheduler (which ignore SIGTERM, see watchdog.guard_process) get SIGKILL;
        everything is reaped.

        patient: the workers finished, so servers and the scheduler exit by themselves
        (given `grace` seconds first).
        """
        _wait_for([p for p in self.procs if p.poll() is None], self.grace if patient else 0)
        workers = [p for p in self.procs if p.poll() is None and p.role.kind == "worker"]
        for proc in workers:
            log.warning("stopping %s (pid %d)", proc.role.name, proc.pid)
            _signal_group(proc, signal.SIGTERM)
        _wait_for(workers, self.grace)
        for proc in self.procs:
            if proc.poll() is None and proc.role.kind != "worker":
                log.info("ending %s (pid %d)", proc.role.name, proc.pid)
            # the group too: whatever a process started must not outlive the job
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                pipe.close()


def _wait_for(procs, seconds):
    end = time.monotonic() + seconds
    while any(p.poll() is None for p in procs) and time.monotonic() < end:
        time.sleep(_POLL)


def _signal_group(proc, signum):
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def _die_with(launcher_pid):
    """preexec_fn: the child gets SIGKILL when the launcher dies (Linux), whatever kills it."""
    libc = ctypes.CDLL(None, use_errno=True)

    def arm():
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != launcher_pid:  # the launcher died before prctl took effect
            os._exit(1)
    return arm
