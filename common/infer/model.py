"""Inference from a checkpoint: load and bind it, and feed it images as validation does.

Shared by predict.py (image files) and score.py (a .rec). A checkpoint is
PREFIX-symbol.json + PREFIX-EPOCH.params, ours (with .sha256 files, verified) or
the model zoo's (without). A training run also left PREFIX-args.json (its
resolved settings) and PREFIX-classes.txt beside them; when they are there they
supply the defaults: the input shape, the images' resize and the class names.

`preprocess` reproduces, for an image file, what the validation iterator
(common.data.record_iter(train=False)) feeds the network for the same image
packed by prepare_data.sh: decode as 3-channel BGR, shorter side to --resize
(recordio_pack.resize_shorter), MXNet's enlargement of an image smaller than the
crop, center crop, RGB, CHW, raw 0-255 floats (no mean/std: the zoo ResNets
normalize in their bn_data layer).
"""
import argparse
import contextlib
import csv
import dataclasses
import glob
import io
import json
import logging
import os
import re

import cv2
import numpy as np

from . import checkpoint, fit, modelzoo
from .cli import UserError, mxnet_reason, nonnegative_int, positive_int
from .data import image_shape as image_shape_type
from .data import packed_resize, read_classes
from .finetune import match_params
from .fsutil import atomic_output, read_json, write_json_atomic, write_text_atomic
from .imagefolder import IMAGE_EXTENSIONS, decode_image
from .recordio_pack import resize_shorter

log = logging.getLogger(__name__)

DEFAULT_IMAGE_SHAPE = (3, 224, 224)
# Without a recorded resize: the ImageNet convention, 256-px images for a 224 crop
# (the crop is 7/8 of the shorter side). As a fraction: 16 -> 18, 224 -> 256.
RESIZE_PER_CROP = (8, 7)
# Output operators whose (N, C) output is a probability distribution per image.
PROBABILITY_OPS = frozenset({"SoftmaxOutput", "softmax", "SoftmaxActivation"})
TICK_LABELS_UP_TO = 30  # confusion.png names its classes only when they stay readable
COUNTS_UP_TO = 15  # ... and writes the counts in its cells


class UnreadableImage(UserError):
    """An image file that cannot be read or decoded; the message names it and why."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


# ---------------------------------------------------------------- arguments

def base_parser(prog, description, top_k_default, top_k_help, add_help=True):
    """The parser predict.py and score.py share: checkpoint options and --top-k."""
    from .cli import HelpFormatter, OneLineArgumentParser
    parser = OneLineArgumentParser(prog=prog, description=description, add_help=add_help,
                                   formatter_class=HelpFormatter)
    add_checkpoint_args(parser)
    parser.add_argument("--top-k", metavar="K", type=positive_int,
                        help=f"{top_k_help} (default: {top_k_default}, or all classes if fewer)")
    return parser


def add_checkpoint_args(parser):
    """The checkpoint argument group both scripts share (model, input, devices)."""
    group = parser.add_argument_group("checkpoint")
    group.add_argument("--model-prefix", metavar="PREFIX", required=True,
                       help="checkpoint prefix: PREFIX-symbol.json and PREFIX-EPOCH.params")
    group.add_argument("--epoch", metavar="N", type=nonnegative_int, required=True,
                       help="checkpoint epoch (0 for the model zoo's files)")
    group.add_argument("--classes", metavar="FILE",
                       help="class names, one per line (default: PREFIX-classes.txt; "
                            "without either, label indices are shown)")
    group.add_argument("--image-shape", metavar="C,H,W", type=image_shape_type,
                       help="network input C,H,W (default: the training run's, from "
                            "PREFIX-args.json, else 3,224,224)")
    group.add_argument("--batch-size", metavar="N", type=positive_int, default=32,
                       help="images per forward pass, over all devices")
    fit.add_device_args(group)
    return group


# ---------------------------------------------------------------- run settings

@dataclasses.dataclass
class Setting:
    """A resolved value and where it came from (said in the output)."""
    value: object
    source: str


def recorded_args(prefix):
    """PREFIX-args.json of the training run as a dict ({} for zoo checkpoints)."""
    recorded = read_json(f"{prefix}-args.json", {})
    return recorded if isinstance(recorded, dict) else {}


def resolve_image_shape(given, recorded):
    """Setting((C, H, W)): --image-shape, else the training run's, else 3,224,224."""
    if given is not None:
        return Setting(tuple(given), "--image-shape")
    shape = recorded.get("image_shape")
    try:
        return Setting(image_shape_type(",".join(str(int(v)) for v in shape)), "PREFIX-args.json")
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        return Setting(DEFAULT_IMAGE_SHAPE, "default")


def recorded_resize(recorded):
    """(resize, summary.json path) prepare_data.sh packed the run's data with, or None."""
    for key in ("data_val", "data_train"):
        rec = recorded.get(key)
        found = packed_resize(rec) if isinstance(rec, str) else None
        if found is not None:
            return found
    return None


def resolve_resize(given, recorded, image_shape):
    """Setting(shorter side in px, 0 = keep): --resize, the data's, else 8/7 of the crop."""
    if given is not None:
        return Setting(given, "--resize")
    found = recorded_resize(recorded)
    if found is not None:
        return Setting(found[0], f"the training data's {found[1]}")
    crop = max(image_shape[1:])
    return Setting(crop * RESIZE_PER_CROP[0] // RESIZE_PER_CROP[1], "default: 8/7 of the crop")


def resolve_classes(classes_file, prefix, num_classes):
    """Setting(names or None): --classes, else PREFIX-classes.txt, else None (indices).

    Raises UserError if the list does not have one name per output of the model.
    """
    if classes_file is not None and not os.path.isfile(classes_file):
        raise UserError(f"--classes {classes_file}: no such file")
    path = classes_file or f"{prefix}-classes.txt"
    if not os.path.isfile(path):
        return Setting(None, f"none (no {path}, no --classes): showing label indices")
    names = read_classes(path)
    if len(names) != num_classes:
        raise UserError(f"{path} lists {len(names)} class names but the checkpoint predicts "
                        f"{num_classes} classes")
    return Setting(names, path)


def resolve_top_k(given, default, num_classes):
    """--top-k if given (UserError if above num_classes), else min(default, num_classes)."""
    if given is None:
        return min(default, num_classes)
    fit.check_top_k(given, num_classes)
    return given


# ---------------------------------------------------------------- checkpoint

def saved_epochs(prefix):
    """Epochs with a PREFIX-EPOCH.params file, sorted."""
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"-(\d{4,})\.params$")
    names = (os.path.basename(p) for p in glob.glob(glob.escape(prefix) + "-*.params"))
    return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)


def saved_prefixes(folder):
    """Checkpoint prefixes (PREFIX-symbol.json) in `folder`, sorted."""
    found = glob.glob(os.path.join(glob.escape(folder or "."), "*-symbol.json"))
    return sorted(p[:-len("-symbol.json")] for p in found)


def check_checkpoint_files(prefix, epoch):
    """Raise UserError naming the missing file and what exists instead."""
    if not os.path.isfile(checkpoint.symbol_path(prefix)):
        others = saved_prefixes(os.path.dirname(prefix))
        where = os.path.dirname(prefix) or "."
        zoo = (f" (model-zoo names are not fetched here: train_caltech.py downloads them to "
               f"--model-dir, e.g. model/{prefix} --epoch 0)") if prefix in modelzoo.MODELS else ""
        raise UserError(f"--model-prefix {prefix}: {checkpoint.symbol_path(prefix)} not found; "
                        f"checkpoints in {where}: {', '.join(others) if others else 'none'}{zoo}")
    if not os.path.isfile(checkpoint.params_path(prefix, epoch)):
        epochs = saved_epochs(prefix)
        raise UserError(f"--epoch {epoch}: {checkpoint.params_path(prefix, epoch)} not found; "
                        f"saved epochs of {prefix}: {', '.join(map(str, epochs)) or 'none'}")


def output_classes(symbol, data_shape):
    """Number of classes C of a symbol whose one output is (N, C) probabilities.

    Raises UserError for a symbol without a 'data' input, with several outputs, or
    whose output is not a softmax over a 2-D (N, C) array.
    """
    import mxnet as mx
    if "data" not in symbol.list_arguments():
        raise UserError(f"the checkpoint has no 'data' input "
                        f"(inputs: {', '.join(symbol.list_arguments()[:5])})")
    graph = json.loads(symbol.tojson())
    if len(graph["heads"]) != 1:
        raise UserError(f"the checkpoint has {len(graph['heads'])} outputs "
                        f"({', '.join(symbol.list_outputs())}); expected one softmax")
    head = graph["nodes"][graph["heads"][0][0]]
    if head["op"] not in PROBABILITY_OPS:
        raise UserError(f"the checkpoint's output {head['name']!r} is a {head['op']}, not a softmax: "
                        f"expected one of {', '.join(sorted(PROBABILITY_OPS))} giving probabilities")
    try:
        # MXNet prints its arguments to stdout before raising: keep stdout for results
        with contextlib.redirect_stdout(io.StringIO()):
            _, (shape,), _ = symbol.infer_shape(data=data_shape)
    except mx.base.MXNetError as exc:
        raise UserError(f"the checkpoint does not take input {','.join(map(str, data_shape[1:]))}: "
                        f"{mxnet_reason(exc)} (check --image-shape)") from None
    if len(shape) != 2:
        raise UserError(f"the checkpoint's output has shape {tuple(shape)} for a batch of "
                        f"{data_shape[0]}; expected (N, C) class probabilities")
    return int(shape[1])


def _label_names(symbol):
    return [name for name in symbol.list_arguments() if name.endswith("_label")]


def bind_module(symbol, arg_params, aux_params, contexts, batch_size, image_shape):
    """An inference Module with every parameter loaded and its name and shape checked.

    batch_size: total over `contexts`; image_shape: (C, H, W).
    """
    import mxnet as mx
    data_shape = (batch_size,) + tuple(image_shape)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=data_shape)
    labels = _label_names(symbol)
    expected = {name: shape for name, shape in zip(symbol.list_arguments(), arg_shapes)
                if name != "data" and name not in labels}
    what = f"checkpoint at --image-shape {','.join(map(str, image_shape))}"
    args = match_params(expected, arg_params, "argument", what)
    aux = match_params(dict(zip(symbol.list_auxiliary_states(), aux_shapes)), aux_params,
                       "auxiliary state", what)
    module = mx.mod.Module(symbol, data_names=("data",), label_names=labels, context=contexts)
    module.bind(data_shapes=[("data", data_shape)],
                label_shapes=[(name, (batch_size,)) for name in labels] or None, for_training=False)
    module.set_params(args, aux, allow_missing=False, allow_extra=False)
    unused = sorted((set(arg_params) - set(args)) | (set(aux_params) - set(aux)))
    if unused:
        log.info("checkpoint arrays the network does not use: %s", ", ".join(unused))
    return module


@dataclasses.dataclass
class Model:
    """A bound inference module. batch_size: images per forward (all devices)."""
    module: object
    prefix: str
    epoch: int
    num_classes: int
    image_shape: tuple
    batch_size: int


def inference_batch(batch_size, num_images, num_devices):
    """Images per forward pass: --batch-size, but no larger than `num_images` needs.

    The total must split evenly over the devices (UserError otherwise).
    """
    per_device = fit.per_device_batch(batch_size, num_devices)
    needed = -(-max(num_images, 1) // num_devices)  # ceil
    return num_devices * min(per_device, needed)


def load_model(prefix, epoch, image_shape, contexts, batch_size):
    """Load PREFIX at EPOCH (verified when digests exist) and bind it for inference."""
    check_checkpoint_files(prefix, epoch)
    fit.per_device_batch(batch_size, len(contexts))
    symbol, arg_params, aux_params = checkpoint.load_checkpoint(prefix, epoch)
    num_classes = output_classes(symbol, (1,) + tuple(image_shape))
    module = bind_module(symbol, arg_params, aux_params, contexts, batch_size, image_shape)
    return Model(module, prefix, epoch, num_classes, tuple(image_shape), batch_size)


# ---------------------------------------------------------------- images

def fit_to_crop(image, height, width):
    """Enlarge an HxWx3 image smaller than the crop, as MXNet 1.9.1's ImageRecordIter does.

    The versions of the augmenter's source we could read (src/io/image_aug_default.cc)
    stop there with a CHECK 'input image size smaller than input shape'; the 1.9.1
    wheel does not fail but resizes (bilinear) an image shorter than `height` to that height, its width
    scaled and floored, then one narrower than `width` to that width, its height
    scaled and floored. Measured, and checked for square and non-square crops by
    tests/test_predict_score.py. Images at least the crop's size are returned as is.
    """
    rows, cols = image.shape[:2]
    if rows < height:
        cols = cols * height // rows
        rows = height
        image = cv2.resize(image, (cols, rows), interpolation=cv2.INTER_LINEAR)
    if cols < width:
        rows = rows * width // cols
        image = cv2.resize(image, (width, rows), interpolation=cv2.INTER_LINEAR)
    return image


def center_crop(image, height, width):
    """The height x width window at offset ((h-height)//2, (w-width)//2), as rand_crop=False does."""
    rows, cols = image.shape[:2]
    top, left = (rows - height) // 2, (cols - width) // 2
    return image[top:top + height, left:left + width]


def preprocess(path, resize, image_shape):
    """The (C, H, W) float32 RGB 0-255 array validation would feed for this image file.

    resize: shorter side in px before cropping (0: keep), as prepare_data.sh packs.
    image_shape: (3, H, W). Raises UnreadableImage naming the file and the reason.
    """
    channels, height, width = image_shape
    if channels != 3:
        raise UserError(f"--image-shape {channels},{height},{width}: only 3-channel (RGB) input "
                        f"is supported for image files")
    image, reason = decode_image(path)
    if reason:
        raise UnreadableImage(path, reason)
    image = center_crop(fit_to_crop(resize_shorter(image, resize), height, width), height, width)
    # BGR -> RGB, HWC -> CHW; copy: the crop is a view into the whole image
    return np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)


def find_images(paths):
    """(image files, problems): files as given, folders expanded to their image files.

    Folders are walked recursively (hidden entries skipped), files kept if their
    extension is in IMAGE_EXTENSIONS, sorted. problems: [(path, reason)] for
    folders without any image. Raises UserError for a path that does not exist.
    """
    files, problems = [], []
    for path in paths:
        if os.path.isfile(path):
            files.append(path)
        elif os.path.isdir(path):
            found = _folder_images(path)
            files.extend(found)
            if not found:
                problems.append((path, f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"))
        else:
            raise UserError(f"{path}: no such file or folder")
    return files, problems


def _folder_images(folder):
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(root, n) for n in names
                     if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
    return sorted(found)


# ---------------------------------------------------------------- prediction

def forward(model, images):
    """(n, C) probabilities for images (n, C, H, W), n <= model.batch_size (zero-padded)."""
    import mxnet as mx
    count = len(images)
    batch = np.zeros((model.batch_size,) + model.image_shape, dtype=np.float32)
    batch[:count] = images
    model.module.forward(mx.io.DataBatch(data=[mx.nd.array(batch)]), is_train=False)
    return model.module.get_outputs()[0].asnumpy()[:count]


def top_k(probs, k):
    """[(label, probability)] of the k most probable classes, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(int(label), float(probs[label])) for label in order]


def predict_files(model, files, resize, k):
    """Yield (path, [(label, probability)] or None, reason or None) for each file, in order.

    Images are decoded one batch at a time, so a folder of any size fits in memory.
    """
    for start in range(0, len(files), model.batch_size):
        chunk, arrays, failed = files[start:start + model.batch_size], [], {}
        for path in chunk:
            try:
                arrays.append(preprocess(path, resize, model.image_shape))
            except UnreadableImage as exc:
                failed[path] = exc.reason
        probs = iter(forward(model, np.stack(arrays)) if arrays else [])
        for path in chunk:
            if path in failed:
                yield path, None, failed[path]
            else:
                yield path, top_k(next(probs), k), None


def prediction_record(path, ranked, names):
    """One image's JSON record: file and ranked {rank, label, name, probability}."""
    return {"file": path, "top_k": [
        {"rank": rank, "label": label, "name": names[label] if names else None,
         "probability": round(prob, 6)}
        for rank, (label, prob) in enumerate(ranked, 1)]}


def format_prediction(path, ranked, names):
    """One image's human-readable block: the file, then 'rank  probability  class' lines."""
    lines = [path]
    for rank, (label, prob) in enumerate(ranked, 1):
        name = names[label] if names else f"label {label}"
        lines.append(f"  {rank}. {prob:7.2%}  {name}")
    return "\n".join(lines)


# ---------------------------------------------------------------- scoring

@dataclasses.dataclass
class Score:
    """Evaluation of a model over every image of a set, each counted once.

    figures: common.evaluate.summarize's dict; counts/hits: (C,) images and top-1
    hits per true class; matrix: (C, C) counts, rows true; seconds: wall time.
    """
    figures: dict
    counts: np.ndarray
    hits: np.ndarray
    matrix: np.ndarray
    seconds: float


def score_record_set(model, record_set, top_k, threads):
    """Score `model` on a checked RecordSet with the validation pipeline."""
    import time
    from . import evaluate
    from .data import record_iter
    tic = time.time()
    data_iter = record_iter(record_set, model.image_shape, model.batch_size, False, threads)
    probs, labels = evaluate.predict_probabilities(model.module, data_iter, record_set.labels)
    counts, hits = evaluate.per_class_accuracy(probs, labels, model.num_classes)
    return Score(evaluate.summarize(probs, labels, model.num_classes, top_k), counts, hits,
                 evaluate.confusion_matrix(probs, labels, model.num_classes), time.time() - tic)


def per_class_rows(counts, hits, names):
    """[(label, name, images, correct, accuracy or None)] sorted by label."""
    return [(label, names[label] if names else str(label), int(n), int(c),
             (c / n) if n else None) for label, (n, c) in enumerate(zip(counts, hits))]


def write_per_class_csv(path, rows):
    """per_class.csv: label,name,images,correct,accuracy (empty accuracy: no image)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label", "name", "images", "correct", "accuracy"])
    for label, name, images, correct, acc in rows:
        writer.writerow([label, name, images, correct, "" if acc is None else f"{acc:.6f}"])
    write_text_atomic(path, buffer.getvalue())


def write_confusion_csv(path, matrix):
    """confusion.csv: counts, row i = true label i, column j = predicted label j."""
    lines = ["true\\predicted," + ",".join(map(str, range(len(matrix))))]
    lines += [f"{i}," + ",".join(map(str, row)) for i, row in enumerate(matrix.tolist())]
    write_text_atomic(path, "\n".join(lines) + "\n")


def plot_confusion(path, matrix, names, title):
    """confusion.png: rows true, columns predicted, each row normalized to sum 1.

    matrix: (C, C) counts. Class names label the axes up to TICK_LABELS_UP_TO
    classes, and the cells show their counts up to COUNTS_UP_TO.
    """
    import matplotlib
    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt
    count = len(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)
    side = min(20.0, max(6.0, 0.3 * count + 3))
    fig, axis = plt.subplots(figsize=(side + 1.5, side))
    image = axis.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of the true class")
    if count <= TICK_LABELS_UP_TO:
        labels = names or [str(i) for i in range(count)]
        axis.set_xticks(range(count), labels, rotation=90, fontsize=8)
        axis.set_yticks(range(count), labels, fontsize=8)
    if count <= COUNTS_UP_TO:
        for (row, col), value in np.ndenumerate(matrix):
            if value:
                axis.text(col, row, str(value), ha="center", va="center", fontsize=8,
                          color="white" if share[row, col] > 0.5 else "black")
    axis.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_score_files(out_dir, report, matrix, rows, names, title):
    """score.json, per_class.csv, confusion.csv and confusion.png in out_dir (atomic)."""
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, "score.json"), report)
    write_per_class_csv(os.path.join(out_dir, "per_class.csv"), rows)
    write_confusion_csv(os.path.join(out_dir, "confusion.csv"), matrix)
    plot_confusion(os.path.join(out_dir, "confusion.png"), matrix, names, title)
