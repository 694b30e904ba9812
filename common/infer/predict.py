"""Predictions for image files: found, preprocessed as validation does, ranked.

Images get common.transforms.preprocess, which reproduces the validation
iterator's input for the same image packed by prepare_data.sh.
"""
import os

import numpy as np

from . import tta
from .model import forward
from ..transforms import IMAGE_EXTENSIONS, UnreadableImage, load_resized, preprocess


def find_images(paths):
    """(image files, problems): files as given, folders expanded to their image files.

    Folders are walked recursively (hidden entries skipped), files kept if their
    extension is in IMAGE_EXTENSIONS, sorted. problems: [(path, reason)] for paths
    that do not exist and folders without any image; the other paths still count.
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
            problems.append((path, "no such file or folder"))
    return files, problems


def _folder_images(folder):
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(root, n) for n in names
                     if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
    return sorted(found)


def top_k(probs, k):
    """[(label, probability)] of the k most probable classes, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(int(label), float(probs[label])) for label in order]


def predict_files(model, files, resize, k, tta_scales=None):
    """Yield (path, [(label, probability)] or None, reason or None) for each file, in order.

    tta_scales: average over the test-time views at these scales (common.infer.tta).
    """
    for path, probs, reason in forward_files(model, files, resize, tta_scales):
        yield path, None if reason else top_k(probs, k), reason


def forward_files(model, files, resize, tta_scales=None):
    """Yield (path, the model's output for it or None, reason or None) for each file, in order.

    Images get `preprocess` (the validation pipeline; resize: shorter side in px), or
    with tta_scales the mean output over their test-time views, and are decoded one
    batch at a time, so a folder of any size fits in memory.
    """
    for start in range(0, len(files), model.batch_size):
        chunk, arrays, failed = files[start:start + model.batch_size], [], {}
        for path in chunk:
            try:
                arrays.append(load_resized(path, resize, model.image_shape) if tta_scales else
                              preprocess(path, resize, model.image_shape))
            except UnreadableImage as exc:
                failed[path] = exc.reason
        if tta_scales:
            outputs = iter(tta.average_views(model, arrays, scales=tta_scales))
        else:
            outputs = iter(forward(model, np.stack(arrays)) if arrays else [])
        for path in chunk:
            if path in failed:
                yield path, None, failed[path]
            else:
                yield path, next(outputs), None


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
