"""Checkpoints in MXNet's model-zoo format, saved atomically and verified on load.

Format: PREFIX-symbol.json + PREFIX-EPOCH.params (keys 'arg:NAME'/'aux:NAME'),
as mx.model.save_checkpoint writes. Unlike it, every file is written under a
temporary name and renamed when complete (a kill during mx.nd.save leaves a
truncated file), and a PATH.sha256 file beside it records its digest: MXNet loads a
flipped byte silently, so a file with a recorded digest is verified on every load.
"""
import glob
import logging
import os
import re

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


def saved_epochs(prefix):
    """Epochs with a PREFIX-EPOCH.params file, sorted."""
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"-(\d{4,})\.params$")
    names = (os.path.basename(p) for p in glob.glob(glob.escape(prefix) + "-*.params"))
    return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)


def saved_prefixes(folder):
    """Checkpoint prefixes (PREFIX-symbol.json) in `folder`, sorted."""
    found = glob.glob(os.path.join(glob.escape(folder or "."), "*-symbol.json"))
    return sorted(p[:-len("-symbol.json")] for p in found)


def require_checkpoint(prefix, epoch, *, prefix_flag="--model-prefix", epoch_flag="--epoch",
                       states=False, note="", verify=True):
    """Check that PREFIX's symbol and EPOCH's params (and .states) exist and match their digests.

    The one place a checkpoint's files are looked for. The flags name the options
    that gave `prefix` and `epoch`, for the message; `note` is appended to the
    message for a missing prefix; verify=False checks existence only (load_checkpoint
    verifies). Raises UserError naming the missing or corrupt file and what exists
    instead (checkpoints in the folder, or saved epochs).
    """
    sym = symbol_path(prefix)
    if not os.path.isfile(sym):
        folder = os.path.dirname(prefix)
        others = ", ".join(saved_prefixes(folder)) or "none"
        raise UserError(f"{prefix_flag} {prefix}: {sym} not found{note}; "
                        f"checkpoints in {folder or '.'}: {others}")
    files = [params_path(prefix, epoch)] + ([states_path(prefix, epoch)] if states else [])
    for path in files:
        if not os.path.isfile(path):
            epochs = ", ".join(map(str, saved_epochs(prefix))) or "none"
            raise UserError(f"{epoch_flag} {epoch}: {path} not found; saved epochs of {prefix}: {epochs}")
    for path in [sym] + files if verify else []:
        verify_digest(path)


def load_checkpoint(prefix, epoch, **flags):
    """(symbol, arg_params, aux_params) of PREFIX at EPOCH, verified.

    flags: require_checkpoint's prefix_flag, epoch_flag and note, for messages.
    Raises UserError naming the missing or corrupt file.
    """
    import mxnet as mx
    require_checkpoint(prefix, epoch, **flags)
    try:
        symbol = mx.sym.load(symbol_path(prefix))
        arrays = mx.nd.load(params_path(prefix, epoch))
    except (mx.base.MXNetError, UnicodeDecodeError) as exc:
        # A corrupt file can make MXNet's own message undecodable, hence UnicodeDecodeError.
        raise UserError(f"checkpoint {prefix} (epoch {epoch}) cannot be read: {mxnet_reason(exc)}") from None
    return (symbol,) + split_params(arrays, params_path(prefix, epoch))


def split_params(arrays, source):
    """{'arg:NAME'|'aux:NAME': array} -> (arg_params, aux_params)."""
    args, aux = {}, {}
    for key, value in arrays.items():
        kind, _, name = key.partition(":")
        if kind not in ("arg", "aux") or not name:
            raise UserError(f"{source}: unexpected key {key!r} (expected 'arg:NAME' or 'aux:NAME')")
        (args if kind == "arg" else aux)[name] = value
    return args, aux


def match_params(expected, params, kind, what):
    """{name: checkpoint array} for every expected {name: shape}, or UserError.

    kind: 'argument' or 'auxiliary state'; what: the checkpoint, for the message.
    """
    missing = sorted(name for name in expected if name not in params)
    wrong = sorted(f"{name} {tuple(params[name].shape)} != {tuple(shape)}"
                   for name, shape in expected.items()
                   if name in params and tuple(params[name].shape) != tuple(shape))
    if missing or wrong:
        problems = ([f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")]
                    if missing else []) + [f"shape {w}" for w in wrong[:5]]
        raise UserError(f"{what} does not fit the network: {len(missing)} {kind}(s) "
                        f"missing, {len(wrong)} of another shape: {'; '.join(problems)}")
    return {name: params[name] for name in expected}
