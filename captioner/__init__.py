"""Image captioning: text preparation, Show-Attend-Tell and M² models, training, decoding and scoring.

Importing this package is cheap (no torch); heavy modules are imported by the commands that need them.
"""

__version__ = "0.1.0"
