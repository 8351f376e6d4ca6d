"""Readers of what users bring: the manifest CSV, the Aff-Wild2 folder layout, annotation files
and timed transcripts. Every parse error names the file, line and column.
"""
