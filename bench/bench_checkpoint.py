"""Benchmark: what committing one checkpoint costs, for the zoo's ResNet sizes.

A commit (common.checkpoint.commit) writes PREFIX-symbol.json, PREFIX-E.params and
PREFIX-E.states, each to a temporary name, fsynced and renamed, with its SHA-256
beside it, then the manifest. This times it on the real parameter shapes of each
network (random values, 1000 classes as the ImageNet-1k checkpoints have) with SGD
momentum state, the size a fine-tuning run's .states has, and also times the
verification a resume does (read_manifest hashes every file). No GPU is needed:
the arrays are saved from the CPU either way.

    python -m bench.bench_checkpoint                   # resnet-50 and resnet-152, 3 runs each
    python -m bench.bench_checkpoint --networks resnet-18 --repeat 1
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("python -m bench.bench_checkpoint")  # before the imports below, which need the requirements

import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

from common import checkpoint  # noqa: E402
from common.cli import HelpFormatter, OneLineArgumentParser, positive_int, run_entry, setup_logging  # noqa: E402
from common.fsutil import write_json_atomic  # noqa: E402
from tools.benchkit import machine, make_workdir, spread  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "bench", "results", "bench_checkpoint.json")


def get_parser():
    parser = OneLineArgumentParser(prog="python -m bench.bench_checkpoint", formatter_class=HelpFormatter,
                                   description="Seconds to commit and to verify one checkpoint.")
    parser.add_argument("--networks", metavar="LIST", default="resnet-50,resnet-152",
                        type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
                        help="symbols/ networks, comma-separated")
    parser.add_argument("--classes", metavar="C", type=positive_int, default=1000, help="outputs of fc1")
    parser.add_argument("--repeat", metavar="R", type=positive_int, default=3, help="commits per network")
    parser.add_argument("--out", metavar="JSON", default=DEFAULT_OUT, help="results file")
    parser.add_argument("--workdir", metavar="DIR", help="where the checkpoints go (default: a temporary folder)")
    return parser


def arrays(network, classes):
    """(symbol, arg_params, aux_params, momentum states) of `network` at 3x224x224, random."""
    import mxnet as mx
    import symbols
    if network not in symbols.NETWORKS:
        from common.cli import UserError
        raise UserError(f"--networks {network}: valid: {', '.join(symbols.NETWORKS)}")
    symbol = symbols.get_symbol(network, num_classes=classes, image_shape=(3, 224, 224))
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=(1, 3, 224, 224))
    names = [n for n in symbol.list_arguments() if n not in ("data", "softmax_label")]
    shapes = dict(zip(symbol.list_arguments(), arg_shapes))
    args = {n: mx.nd.random.normal(shape=shapes[n]) for n in names}
    aux = {n: mx.nd.ones(s) for n, s in zip(symbol.list_auxiliary_states(), aux_shapes)}
    states = {i: mx.nd.zeros(shapes[n]) for i, n in enumerate(names)}  # SGD momentum per weight
    return symbol, args, aux, states


def time_network(network, classes, repeat, folder):
    import pickle
    symbol, args, aux, states = arrays(network, classes)
    prefix = os.path.join(folder, network)

    def write_states(path):  # what Module.save_optimizer_states writes: the updater's pickled states
        with open(path, "wb") as f:
            f.write(pickle.dumps(states))
    commits, verifies = [], []
    for epoch in range(1, repeat + 1):
        tic = time.perf_counter()
        checkpoint.commit(prefix, epoch, symbol=symbol, arg_params=args, aux_params=aux,
                          write_states=write_states, info={"epoch": epoch})
        commits.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        checkpoint.read_manifest(prefix, epoch)
        verifies.append(time.perf_counter() - tic)
    sizes = {name: os.path.getsize(path) for name, path in (
        ("params", checkpoint.params_path(prefix, 1)), ("states", checkpoint.states_path(prefix, 1)))}
    return {"network": network, "parameters": int(sum(a.size for a in args.values())),
            "params_mb": round(sizes["params"] / 2 ** 20, 1), "states_mb": round(sizes["states"] / 2 ** 20, 1),
            "commit_seconds": spread([round(t, 3) for t in commits]),
            "verify_seconds": spread([round(t, 3) for t in verifies])}


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    folder, remove = make_workdir(args.workdir, "bench_checkpoint")
    try:
        results = [time_network(n, args.classes, args.repeat, folder) for n in args.networks]
    finally:
        if remove:
            shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json_atomic(args.out, {"benchmark": "bench_checkpoint", "conditions": dict(
        machine(), classes=args.classes, repeat=args.repeat, folder=os.path.abspath(folder)), "results": results})
    print(f"{'network':<12} {'params MB':>9} {'states MB':>9} {'commit s (median, min-max)':>28} "
          f"{'verify s':>9}")
    for r in results:
        c, v = r["commit_seconds"], r["verify_seconds"]
        print(f"{r['network']:<12} {r['params_mb']:>9} {r['states_mb']:>9} "
              f"{c['median']:>12.2f} ({c['min']:.2f}-{c['max']:.2f}){'':>8} {v['median']:>9.2f}")
    print(f"results: {args.out}")


if __name__ == "__main__":
    import sys
    sys.exit(run_entry(main, "bench.bench_checkpoint"))
