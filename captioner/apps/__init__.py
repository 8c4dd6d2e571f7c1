"""Applications on trained models: caption your own images, import the M² authors' released weights."""
