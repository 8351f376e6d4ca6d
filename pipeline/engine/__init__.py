"""The extraction engine: what a stage is, how keys and plans are made, how tasks run on Dask,
and how shards are written, indexed, read, verified and collected.

Nothing here knows about faces, audio or Aff-Wild2; stages (`pipeline.stages`) plug into it.
"""
