"""Stage 0, the data: the demo dataset generator, the Karpathy JSON reader, the image manifest the feature stage
reads, and text preparation (vocabulary, encoded captions)."""
