"""The networks stages run, one module per network, each loading its own weights.

Weights users download (InceptionResnetV1, IR-50, VGGish, a Whisper model folder, a
sentence-transformers model) are resolved from a local path through one helper,
`weights.py`: the same lookup (setting, then environment variable, then the network's
default place), the same sha256 identity, and the same missing-weights error saying where
to get them; never random weights unless asked for.
"""
