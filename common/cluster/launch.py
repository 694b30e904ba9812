"""launch.py: MXNet's tools/launch.py interface, supervised, on Python 3.11.

    python launch.py -n 2 -s 1 --launcher local python train_caltech.py ... --kv-store dist_sync

The flags are MXNet's (-n, -s, -H, --launcher, --env-server, --env-worker, --env,
--sync-dst-dir). What differs is what 1.9.1's launcher gets wrong: it binds to
the address asked for (--host/--interface, or DMLC_NODE_HOST/DMLC_INTERFACE;
with --launcher local everything stays on 127.0.0.1), it passes --env-worker and
--env-server to the processes they name, it runs under `srun` inside a Slurm
allocation (--launcher slurm), and a watchdog ends the whole job when one
process dies or the workers stop making progress (common.cluster.job,
common.cluster.watchdog), so that a scheduler can requeue it.
"""
import argparse
import os

from . import hosts, job as jobs, remote, watchdog
from ..cli import (HelpFormatter, OneLineArgumentParser, UserError, int_at_least, positive_float, positive_int,
                   setup_logging)

LAUNCHERS = ("local", "ssh", "mpi", "sge", "yarn", "slurm")
WATCHDOG_SECONDS = 600  # longer than a validation pass or a checkpoint save of a large run


def get_parser():
    parser = OneLineArgumentParser(prog="launch.py", description=__doc__.split("\n")[0],
                                   formatter_class=HelpFormatter)
    parser.add_argument("-n", "--num-workers", type=positive_int, required=True, help="worker processes")
    parser.add_argument("-s", "--num-servers", type=int_at_least(1),
                        help="server processes (default: as many as workers)")
    parser.add_argument("-H", "--hostfile", help="hosts, one a line (host, host:port, host slots=N): "
                                                 "needed by ssh, optional for mpi")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="ssh", help="how processes are started")
    parser.add_argument("--sync-dst-dir", help="ssh: rsync this folder to DIR on every host first, and run there")
    parser.add_argument("--env-server", action="append", default=[], metavar="NAME:VALUE",
                        help="set NAME=VALUE for the servers (repeat for more)")
    parser.add_argument("--env-worker", action="append", default=[], metavar="NAME:VALUE",
                        help="set NAME=VALUE for the workers (repeat for more)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME",
                        help="pass this variable's value here to every remote process (local ones get all)")
    parser.add_argument("--host", help="address the scheduler binds to (default: 127.0.0.1 for "
                                       "--launcher local, else this machine's name); DMLC_NODE_HOST alike")
    parser.add_argument("--interface", help="bind to this network interface's address (DMLC_INTERFACE)")
    parser.add_argument("--watchdog-seconds", type=positive_float, default=WATCHDOG_SECONDS,
                        help="a worker that makes no progress for this long ends the job")
    parser.add_argument("--stop-seconds", type=positive_float, default=30.0,
                        help="after a stop signal, the workers' time to commit and exit")
    parser.add_argument("--grace-seconds", type=positive_float, default=10.0,
                        help="between SIGTERM and SIGKILL when the job ends a process")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command every process runs")
    return parser


def parse(argv=None):
    args = get_parser().parse_args(argv)
    if not args.command:
        raise UserError("launch.py: give the command to run after the options, e.g. "
                        "python train_caltech.py ... --kv-store dist_sync")
    if args.num_servers is None:
        args.num_servers = args.num_workers
    if args.launcher == "ssh" and not args.hostfile:
        raise UserError("--launcher ssh needs -H HOSTFILE (the hosts to run on)")
    args.host = args.host or os.environ.get("DMLC_NODE_HOST")
    args.interface = args.interface or os.environ.get("DMLC_INTERFACE")
    return args


def job_env(args, address, port):
    """What every process of the job gets: MXNet's DMLC_* variables and the --env ones."""
    unset = [name for name in args.env if name not in os.environ]
    if unset:
        raise UserError(f"--env {unset[0]}: no such variable is set here, so there is no value to pass on")
    env = {"DMLC_PS_ROOT_URI": address, "DMLC_PS_ROOT_PORT": str(port),
           "DMLC_NUM_WORKER": str(args.num_workers), "DMLC_NUM_SERVER": str(args.num_servers),
           "DMLC_JOB_CLUSTER": args.launcher}
    env.update({name: os.environ[name] for name in args.env})
    return env


def role_env(args, kind, address):
    """The variables of one kind of process: its role, its address, and its --env-* pairs."""
    env = {"DMLC_ROLE": kind}
    if args.interface:
        env["DMLC_INTERFACE"] = args.interface
    elif args.launcher == "local":
        env["DMLC_NODE_HOST"] = address
    if kind == "worker":
        env.update(hosts.env_pairs(args.env_worker, "--env-worker"))
        env[watchdog.SECONDS_VAR] = str(args.watchdog_seconds)
    elif kind == "server":
        env.update(hosts.env_pairs(args.env_server, "--env-server"))
    return env


def main(argv=None):
    """Run the job; returns its exit status (0: every worker finished)."""
    setup_logging()
    args = parse(argv)
    address = hosts.scheduler_address(args.launcher, args.host, args.interface)
    port = hosts.free_port(address)
    base = job_env(args, address, port)
    job = jobs.Job(grace=args.grace_seconds, stop_seconds=args.stop_seconds)
    scheduler = dict(os.environ, **base, DMLC_ROLE="scheduler")
    scheduler.pop("DMLC_NODE_HOST", None)  # the scheduler binds to DMLC_PS_ROOT_URI
    roles = [jobs.Role("scheduler", "scheduler", list(args.command), scheduler)]
    roles += remote.roles(args, base, lambda kind: role_env(args, kind, address))
    for role in roles:
        job.start(role)
    return job.wait()
