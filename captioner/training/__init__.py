"""Stage 2: training on cached features (the trainer, data-parallel helpers, CIDEr-D for rewards and validation)."""
