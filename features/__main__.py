"""Feature stage (stage 1 of the DAG): ``python -m features COMMAND ...``."""

from __future__ import annotations

import sys

from pipeline.cli import main as run_commands

COMMANDS = {  # what people type
    "import-m2-features": ("features.import_m2_features", "import a coco_detections.hdf5 (M² reference layout) into a store"),
    "verify": ("features.verify", "check a store: shapes, NaN/Inf, num_boxes, missing ids"),
}

JOBS = {  # what the workflow's rules run: python -m features job NAME --spec JSON ...
    "extract": ("features.extract", "extract grid or region features into a store (.h5 or .zarr)"),
    "pretrain": ("features.pretrain", "train a ResNet trunk on the training split's labelled boxes "
                                      "(offline stand-in for ImageNet weights)"),
    "merge": ("features.store.merge", "merge shard stores into one store"),
    "import-m2-features": ("features.import_m2_features", "the M² authors' coco_detections.hdf5 into a store "
                                                          "(the images of a manifest)"),
}


def main(argv: list[str] | None = None) -> int:
    return run_commands("python -m features", __doc__, COMMANDS, argv, JOBS)


if __name__ == "__main__":
    sys.exit(main())
