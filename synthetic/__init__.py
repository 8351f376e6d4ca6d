"""Made-up data, kept apart from the product code: the embedded demo dataset and its run
(`affpipe demo`), generated media for the tests and benches, and an Aff-Wild2-sized
synthetic cache for the trainer's benches.

Nothing in `pipeline` or `fusion` imports this package.
"""
