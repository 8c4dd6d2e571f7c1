"""Helpers every stage of the pipeline shares: atomic outputs, the expected-error base class and the
command-line runner, code fingerprints (rerun boundaries), the image manifest, and config defaults.

This package is the bottom layer: it imports nothing of ``captioner`` or ``features`` (see
``tests/test_layers.py``), and importing it is cheap (no torch).
"""
