"""Image captioning, in the order of the DAG (imports point only down this list; ``tests/test_layers.py``):

- ``data``: stage 0 — demo dataset, Karpathy reader, image manifest, text preparation;
- (stage 1 is the separate ``features`` package);
- ``models``: the registry, the model files (Show-Attend-Tell, M²), checkpoints, beam search;
- ``training`` and ``evaluation``: stage 2 (train) and stage 3 (decode, score, tables, attention maps);
- ``apps``: caption your own images, import the M² authors' weights.

Importing this package is cheap (no torch); heavy modules are imported by the commands that need them.
"""

__version__ = "0.1.0"
