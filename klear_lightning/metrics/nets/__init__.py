"""The metrics' extractor networks, each in the key layout of its released checkpoint, with its loader.

What a metric does with a network (preprocessing, formula, protocol) lives in `klear_lightning.metrics`.
"""
