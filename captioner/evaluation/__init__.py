"""Stage 3: beam-search decoding, pycocoevalcap scoring, results tables, attention figures."""
