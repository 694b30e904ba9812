"""Checkpoints in MXNet's model-zoo format, saved atomically and verified on load.

Format: PREFIX-symbol.json + PREFIX-EPOCH.params (keys 'arg:NAME'/'aux:NAME'),
as mx.model.save_checkpoint writes. Unlike it, every file is written under a
temporary name and renamed when complete (a kill during mx.nd.save leaves a
truncated file), and a PATH.sha256 file beside it records its digest: MXNet loads a
flipped byte silently, so a file with a recorded digest is verified on every load.
"""
import logging
import os

from .cli import UserError, mxnet_reason
from .fsutil import atomic_output, file_digest, write_text_atomic

log = logging.getLogger(__name__)


def symbol_path(prefix):
    return f"{prefix}-symbol.json"


def params_path(prefix, epoch):
    return f"{prefix}-{epoch:04d}.params"


def states_path(prefix, epoch):
    return f"{prefix}-{epoch:04d}.states"


def record_digest(path):
    """Write PATH.sha256 ('HEX  NAME', sha256sum's format) for an existing file."""
    digest = file_digest(path)
    write_text_atomic(path + ".sha256", f"{digest}  {os.path.basename(path)}\n")
    return digest


def recorded_digest(path):
    """The digest recorded beside `path`, or None when none was recorded."""
    try:
        with open(path + ".sha256", encoding="utf-8") as f:
            return f.read().split()[0]
    except (OSError, IndexError):
        return None


def verify_digest(path):
    """Raise UserError if `path` differs from its recorded digest (no record: no check)."""
    expected = recorded_digest(path)
    if expected is not None and file_digest(path) != expected:
        raise UserError(f"{path} is corrupt: its SHA-256 differs from the one recorded in "
                        f"{path}.sha256 when it was written")


def save_file_atomic(path, write):
    """Call write(tmp_path), rename the result to `path`, record its digest."""
    with atomic_output(path) as tmp:
        write(tmp)
    record_digest(path)


def save_checkpoint(prefix, epoch, symbol, arg_params, aux_params):
    """Write PREFIX-symbol.json and PREFIX-EPOCH.params (atomic, with digests)."""
    import mxnet as mx
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    save_file_atomic(symbol_path(prefix), symbol.save)
    arrays = {f"arg:{k}": v.as_in_context(mx.cpu()) for k, v in arg_params.items()}
    arrays.update({f"aux:{k}": v.as_in_context(mx.cpu()) for k, v in aux_params.items()})
    save_file_atomic(params_path(prefix, epoch), lambda tmp: mx.nd.save(tmp, arrays))


def load_checkpoint(prefix, epoch, what="checkpoint"):
    """(symbol, arg_params, aux_params) of PREFIX at EPOCH, verified.

    Raises UserError naming the missing or corrupt file.
    """
    import mxnet as mx
    sym_file, par_file = symbol_path(prefix), params_path(prefix, epoch)
    for path in (sym_file, par_file):
        if not os.path.isfile(path):
            raise UserError(f"{what} {prefix} (epoch {epoch}): {path} not found")
        verify_digest(path)
    try:
        symbol = mx.sym.load(sym_file)
        arrays = mx.nd.load(par_file)
    except (mx.base.MXNetError, UnicodeDecodeError) as exc:
        # A corrupt file can make MXNet's own message undecodable, hence UnicodeDecodeError.
        raise UserError(f"{what} {prefix} (epoch {epoch}) cannot be read: {mxnet_reason(exc)}") from None
    return (symbol,) + split_params(arrays, par_file)


def split_params(arrays, source):
    """{'arg:NAME'|'aux:NAME': array} -> (arg_params, aux_params)."""
    args, aux = {}, {}
    for key, value in arrays.items():
        kind, _, name = key.partition(":")
        if kind not in ("arg", "aux") or not name:
            raise UserError(f"{source}: unexpected key {key!r} (expected 'arg:NAME' or 'aux:NAME')")
        (args if kind == "arg" else aux)[name] = value
    return args, aux
