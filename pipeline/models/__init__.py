"""The networks stages run, one module per network, each loading its own weights.

Weights users download (InceptionResnetV1, IR-50, VGGish) are resolved from a local file;
a missing one is an error that says where to get it, never random weights unless asked for.
"""
