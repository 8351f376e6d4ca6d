"""Pixels and samples: video/audio decoding, face alignment, tracking and track-guided detection.

These modules hold no cache logic and no network weights; stages combine them with `pipeline.models`.
"""
