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

The other two knobs are MXNet's more than ours: ImageRecordIter decodes with at
most half the processors, whatever it is asked (decode_threads), and the engine
keeps MXNet's one worker per context (ENGINE_WORKERS says why).

Standard library only: it runs before the requirements are imported.
"""
import logging
import os
import sys

USER_SETTINGS = ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS")
# Engine workers per CPU context. MXNET_CPU_WORKER_NTHREADS=2 trained ResNet-18 at
# 3x64x64 about 1.09x faster here (median of 13 interleaved pairs), but MXNet 1.9.1
# then races on BatchNorm's moving means and variances: the same weights as NaiveEngine
# and one worker, but 36 of 40 statistics ~5% off in runs on a quiet machine (ResNet-20
# at 32 px too; equal in some runs under load). A wrong checkpoint, so the default of
# 1 stays and a larger setting is warned about.
ENGINE_WORKERS = 1
WORKERS_SETTING = "MXNET_CPU_WORKER_NTHREADS"
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
    """{source, settings, cores, engine_workers}: where the OpenMP thread count came from
    and what it is, and the engine's workers per CPU context.

    source: "chosen" (configure set it), "environment" (the user's), or "mxnet default"
    (nothing set, e.g. main() called in a process that imported MXNet first: half the cores).
    """
    environ = os.environ if environ is None else environ
    settings = {name: environ[name] for name in (*USER_SETTINGS, "MXNET_ENGINE_TYPE", WORKERS_SETTING)
                if name in environ}
    if _CHOICE and environ.get("OMP_NUM_THREADS") == _CHOICE["value"]:
        source = "chosen"
    elif any(name in settings for name in USER_SETTINGS):
        source = "environment"
    else:
        source = "mxnet default"
        settings["OMP_NUM_THREADS"] = str(max(1, usable_cores() // 2))
    return {"source": source, "settings": settings, "cores": usable_cores(),
            "engine_workers": engine_workers(environ), **{k: v for k, v in _CHOICE.items() if k != "value"}}


def engine_workers(environ=None):
    """Engine worker threads per CPU context: the user's MXNET_CPU_WORKER_NTHREADS or MXNet's 1."""
    environ = os.environ if environ is None else environ
    text = environ.get(WORKERS_SETTING, "").strip()
    return int(text) if text.isdigit() else ENGINE_WORKERS


def engine_warning(described):
    """A warning line when the threaded engine runs more than one worker a context, or None."""
    naive = described["settings"].get("MXNET_ENGINE_TYPE") == "NaiveEngine"
    if described["engine_workers"] <= ENGINE_WORKERS or naive:
        return None
    return (f"{WORKERS_SETTING}={described['engine_workers']}: with more than one engine worker a "
            f"context, MXNet 1.9.1 races on BatchNorm's moving statistics, and the checkpoint saves "
            f"them (common/threads.py)")


def summary(described):
    """One log line's worth: 'OMP_NUM_THREADS=2 (chosen: 2 cores, 1 CPU context)'."""
    settings = " ".join(f"{k}={v}" for k, v in described["settings"].items())
    why = described["source"]
    if why == "chosen":
        why += f": {described['cores']} cores, {described['cpu_contexts']} CPU context(s)"
    return f"{settings} ({why}), {described['engine_workers']} engine worker(s) a context"


def decode_limit():
    """The most decoding threads MXNet 1.9.1's ImageRecordIter uses: half the processors
    (omp_get_num_procs, which counts this process's affinity mask), at least one.
    It silently lowers a larger preprocess_threads to this (iter_image_recordio_2.cc)."""
    return max(usable_cores() // 2, 1)


def decode_threads(requested, option="--data-nthreads"):
    """The decoding threads an iterator gets for `requested` (None: chosen, the limit).

    A request above decode_limit() is lowered to it, with a warning line: MXNet
    would lower it silently, and the run records the count it decodes with."""
    limit = decode_limit()
    if requested is not None and requested > limit:
        logging.getLogger(__name__).warning(
            "%s %d: MXNet 1.9.1's ImageRecordIter decodes with at most half of the %d cores this "
            "process may use; decoding with %d", option, requested, usable_cores(), limit)
    return limit if requested is None else min(requested, limit)
