"""Speech recognition helpers behind the `asr` stage: voice activity, recognisers, word transcripts.

`vad` finds speech and cuts it into bounded, overlapping decode windows; `backends` turns one
window of 16 kHz audio into timed words (pocketsphinx or faster-whisper); `words` is the one
shape those words take in a shard, in the text stage and in exported files.
"""
