"""The given-boxes JSON (the demo's true boxes, or your own): boxes per image id, checked, and optional labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import InputError, MissingKeyError


def load_given_boxes(path: str | Path) -> dict[int, list]:
    """``{image_id: {"boxes": [[x1, y1, x2, y2], ...], ...}}`` (or ``{image_id: [[...], ...]}``), checked."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    boxes = {}
    for key, value in data.items():
        value = value["boxes"] if isinstance(value, dict) else value
        array = np.asarray(value, dtype=np.float32).reshape(-1, 4)
        if len(array) == 0:
            raise InputError(f"{path}: image {key} has no boxes")
        if not np.all(array[:, 2] > array[:, 0]) or not np.all(array[:, 3] > array[:, 1]):
            raise InputError(f"{path}: image {key} has a box with x2<=x1 or y2<=y1")
        boxes[int(key)] = array.tolist()
    return boxes


def check_covered(boxes: dict, image_ids, boxes_json) -> None:
    """Every image needs boxes: fail before any extraction starts, naming the first id without any."""
    absent = [i for i in image_ids if i not in boxes]
    if absent:
        raise MissingKeyError(f"{boxes_json}: no boxes for image id {absent[0]} ({len(absent)} images without boxes)")
