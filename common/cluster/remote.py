"""How each launcher starts the servers and workers: as local processes, over ssh,
with mpirun, with qsub (SGE) or with srun inside a Slurm allocation.

Each builder returns common.cluster.job.Role objects: the launcher supervises
the process it starts here (the ssh, mpirun, qsub -sync or srun client for
remote ones), so that a failure anywhere ends the job. The role assignment over
a host file is MXNet's (servers first, round robin).
"""
import os
import shlex
import subprocess

from . import watchdog
from .hosts import read_hostfile
from .job import Role
from .. import threads
from ..cli import UserError

# Passed to remote processes when set here, as MXNet's ssh launcher does.
SSH_PASSED = ("OMP_NUM_THREADS", "KMP_AFFINITY", "LD_LIBRARY_PATH", "MXNET_ENGINE_TYPE", "PYTHONPATH")
_SSH = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes"]


def roles(args, base, env_of):
    """The server and worker Roles of `args.launcher`. base: the job's variables;
    env_of(kind): a kind's own variables (common.cluster.launch.role_env)."""
    if args.launcher == "yarn":
        raise UserError("--launcher yarn: MXNet 1.9.1's wheel ships dmlc_tracker without dmlc-yarn.jar "
                        "(dmlc-core tracker/yarn), so it cannot submit to YARN; valid here: "
                        "local, ssh, mpi, sge, slurm")
    return _BUILDERS[args.launcher](args, base, env_of)


def _kinds(args):
    return (("server", args.num_servers), ("worker", args.num_workers))


def local_roles(args, base, env_of):
    """Every role on this machine; the workers share its cores (common.threads)."""
    shared = {"worker": threads.share_env(args.num_workers, list(args.command)), "server": {}}
    return [Role(f"{kind} {i}", kind, list(args.command), dict(os.environ, **base, **shared[kind], **env_of(kind)))
            for kind, count in _kinds(args) for i in range(count)]


def ssh_command(host, port, env, folder, command):
    """ssh argv running `command` in `folder` on `host` with exactly `env` added."""
    assignments = [f"{name}={value}" for name, value in env.items()]
    remote = f"cd {shlex.quote(folder)} && exec env {shlex.join(assignments + list(command))}"
    return _SSH + ["-p", port, host, remote]


def ssh_roles(args, base, env_of):
    hostlist = read_hostfile(args.hostfile)
    folder = args.sync_dst_dir or os.getcwd()
    if args.sync_dst_dir:
        sync_folder(hostlist, folder)
    passed = {name: os.environ[name] for name in SSH_PASSED if name in os.environ}
    out = []
    kinds = [kind for kind, count in _kinds(args) for _ in range(count)]
    for i, kind in enumerate(kinds):
        host, port = hostlist[i % len(hostlist)]
        env = dict(passed, **base, **env_of(kind))
        env[watchdog.EOF_VAR] = "1"  # the ssh connection closing (launcher gone) ends it
        if "DMLC_INTERFACE" not in env:
            env["DMLC_NODE_HOST"] = host
        name = f"{kind} {kinds[:i].count(kind)}"
        out.append(Role(f"{name} on {host}", kind, ssh_command(host, port, env, folder, args.command),
                        dict(os.environ)))
    return out


def sync_folder(hostlist, folder):
    """rsync the current folder to `folder` on every host (MXNet's --sync-dst-dir)."""
    for host, port in dict.fromkeys(hostlist):
        rsh = " ".join(_SSH + ["-p", port])
        result = subprocess.run(["rsync", "-az", "--rsh", rsh, os.getcwd() + "/", f"{host}:{folder}"],
                                capture_output=True, text=True)
        if result.returncode:
            raise UserError(f"--sync-dst-dir {folder}: rsync to {host} failed (exit {result.returncode}): "
                            f"{result.stderr.strip().splitlines()[-1:] or ''}")


def mpi_env_flags(env):
    """mpirun flags that set `env` for its processes (Open MPI: -x, MPICH: -env), as MXNet's mpi launcher."""
    try:
        version = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        raise UserError("--launcher mpi: mpirun is not on PATH (install Open MPI or MPICH)") from None
    if "Open MPI" in version or "OpenRTE" in version:
        return [flag for name, value in env.items() for flag in ("-x", f"{name}={value}")]
    if "mpich" in version.lower() or "HYDRA" in version:
        return [flag for name, value in env.items() for flag in ("-env", name, value)]
    raise UserError(f"--launcher mpi: unknown MPI ({version.strip()[:60]!r}); valid: Open MPI, MPICH")


def mpi_roles(args, base, env_of):
    hostfile = ["--hostfile", args.hostfile] if args.hostfile else []
    return [Role(f"{kind}s (mpirun)", kind,
                 ["mpirun", "-n", str(count), *hostfile, *mpi_env_flags(dict(base, **env_of(kind))),
                  *args.command], dict(os.environ))
            for kind, count in _kinds(args)]


def sge_roles(args, base, env_of):
    """One array job per kind, submitted with `qsub -sync y` so that the client waits for it."""
    out = []
    for kind, count in _kinds(args):
        env = dict(base, **env_of(kind))
        bad = [name for name, value in env.items() if "," in value]
        if bad:
            raise UserError(f"--launcher sge: {bad[0]}={env[bad[0]]!r} has a comma, which qsub -v cannot pass")
        variables = ",".join(f"{name}={value}" for name, value in env.items())
        out.append(Role(f"{kind}s (qsub)", kind,
                        ["qsub", "-sync", "y", "-b", "y", "-cwd", "-V", "-t", f"1-{count}",
                         "-N", f"mxnet-{kind}", "-v", variables, *args.command], dict(os.environ)))
    return out


def slurm_roles(args, base, env_of):
    """One srun step per kind inside the current allocation; srun passes its environment on."""
    if "SLURM_JOB_ID" not in os.environ:
        raise UserError("--launcher slurm runs inside a Slurm allocation (sbatch or salloc): "
                        "no SLURM_JOB_ID here")
    # --overlap: the server and worker steps share the allocation's nodes.
    return [Role(f"{kind}s (srun)", kind,
                 ["srun", "--overlap", "--kill-on-bad-exit=1", f"--ntasks={count}", *args.command],
                 dict(os.environ, **base, **env_of(kind)))
            for kind, count in _kinds(args)]


_BUILDERS = {"local": local_roles, "ssh": ssh_roles, "mpi": mpi_roles, "sge": sge_roles,
             "slurm": slurm_roles}
