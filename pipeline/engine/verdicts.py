"""Ledger kinds that are verdicts about the input, as opposed to errors of the run.

A verdict is a correct outcome: the video has no face, does not decode, its
annotation or transcript is malformed, a file is missing. Retrying cannot
change it (fixing the input file changes its fingerprint, so it is computed
anew anyway), so `affpipe extract` exits with its own status for it, `affpipe
failures` does not advise ``--retry-failed`` for it, and training skips such
trials with a warning. Every other kind (missing weights, a worker crash, an
exception class name) is an error someone has to look at.
"""
from __future__ import annotations

INPUT_VERDICTS = frozenset({
    "no-face", "corrupt-media", "bad-annotation", "bad-transcript", "missing-file", "frame-mismatch",
    "no-word-timing",
})

#: `affpipe extract` exit statuses: all done / done, but some trials got input verdicts / errors happened.
EXIT_OK, EXIT_ERRORS, EXIT_VERDICTS = 0, 1, 3


def is_verdict(kind: str) -> bool:
    """True for a ledger kind that records a property of the input, not a failure of affpipe."""
    return kind in INPUT_VERDICTS
