"""Every core at work by default: MXNet's OpenMP threads chosen before it is imported.

MXNet 1.9.1 gives its OpenMP pool half of omp_get_num_procs() on x86 unless
OMP_NUM_THREADS or MXNET_OMP_MAX_THREADS is set (src/engine/openmp.cc), so on a
2-core machine every default run computes on one core; two threads train
ResNet-18 at 3x64x64 1.65x faster here, with the same accuracy. configure()
sets OMP_NUM_THREADS to the cores this process may use (os.sched_getaffinity)
divided among its CPU contexts (--cpus N: each context has its own engine
worker, which runs its operators on that many threads). A setting the user
made always wins, and so does NaiveEngine's repeatability: it needs the user's
OMP_NUM_THREADS=1 as before. The choice is logged and recorded in PREFIX-args.json.

Standard library only: it runs before the requirements are imported.
"""
import os
import sys

USER_SETTINGS = ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS")
_CHOICE = {}  # what configure() did in this process


def usable_cores():
    """The cores this process may run on (its affinity mask, e.g. a Slurm allocation's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_contexts(argv):
    """The CPU contexts the command line asks for: --cpus N (default 1; with --gpus the
    CPU only feeds the GPUs, so it is one)."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--cpus=") else (
            argv[i + 1] if arg == "--cpus" and i + 1 < len(argv) else None)
        if value is not None:
            return int(value) if value.isdigit() and int(value) > 0 else 1  # the parser names a bad value
    return 1


def share_env(processes, argv, environ=None):
    """{OMP_NUM_THREADS: ...} for `processes` processes running `argv` on this machine's
    cores (launch.py's local workers), or {} when the user set the threads."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in USER_SETTINGS):
        return {}
    return {"OMP_NUM_THREADS": str(max(1, usable_cores() // (processes * cpu_contexts(argv))))}


def configure(argv=None, environ=None):
    """Set OMP_NUM_THREADS for this process (argv: its options, default sys.argv[1:]) unless
    the user did or MXNet is imported already; returns describe()."""
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    if not any(name in environ for name in USER_SETTINGS) and "mxnet" not in sys.modules:
        cores, contexts = usable_cores(), cpu_contexts(argv)
        environ["OMP_NUM_THREADS"] = str(max(1, cores // contexts))
        _CHOICE.update(cores=cores, cpu_contexts=contexts, value=environ["OMP_NUM_THREADS"])
    return describe(environ)


def describe(environ=None):
    """{source, settings, cores}: where the OpenMP thread count came from and what it is.

    source: "chosen" (configure set it), "environment" (the user's), or "mxnet default"
    (nothing set, e.g. main() called in a process that imported MXNet first: half the cores).
    """
    environ = os.environ if environ is None else environ
    settings = {name: environ[name] for name in (*USER_SETTINGS, "MXNET_ENGINE_TYPE", "MXNET_CPU_WORKER_NTHREADS")
                if name in environ}
    if _CHOICE and environ.get("OMP_NUM_THREADS") == _CHOICE["value"]:
        source = "chosen"
    elif any(name in settings for name in USER_SETTINGS):
        source = "environment"
    else:
        source = "mxnet default"
        settings["OMP_NUM_THREADS"] = str(max(1, usable_cores() // 2))
    return {"source": source, "settings": settings, "cores": usable_cores(),
            **{k: v for k, v in _CHOICE.items() if k != "value"}}


def summary(described):
    """One log line's worth: 'OMP_NUM_THREADS=2 (chosen: 2 cores, 1 CPU context)'."""
    settings = " ".join(f"{k}={v}" for k, v in described["settings"].items())
    why = described["source"]
    if why == "chosen":
        why += f": {described['cores']} cores, {described['cpu_contexts']} CPU context(s)"
    return f"{settings} ({why})"
