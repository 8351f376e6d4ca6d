"""HDF5 shard files: one per (trial, stage, key), keyed by frame.

Layout of a shard:
  /frame     int64  [n]        0-based frame index in the video
  /time      float64 [n]       seconds, from the decoder's timestamps
  /features  [n, dim]          chunked along time, uncompressed (see below)
  /valid     bool [n]          face found / audio covered / word present / labelled
  /<extra>   any               stage-specific (boxes, landmarks, segments, ...)
  root attrs: trial, stage, key, version, settings (JSON), upstream (JSON),
              fingerprint (JSON), versions (JSON), weights, fps, n_decoded,
              n_container, n_labelled, ... plus the stage's own attrs.

Frame-keyed arrays are uncompressed: gzip on float16 embeddings saved ~15% of
the bytes and bought nothing the trainer needs (it reads whole shards once).
Files are written under a temporary name in the same folder and renamed, so a
killed writer never leaves a half shard in place.

Integrity (schema 2): every array dataset carries HDF5's fletcher32 checksum,
checked by HDF5 on every read of a chunk, so flipped bytes surface as a read
error rather than as numbers; datasets that cannot carry a filter (strings,
scalars, empty arrays) have a sha256 in the ``digests`` attribute; files are
written with the latest HDF5 format, whose metadata (superblock, object
headers, B-trees) is checksummed too. Shards of schema 1 (no checksums) are
not trusted and are recomputed. `finite_problems` refuses NaN/Inf before a
shard is written; `verify_shard` reads everything and checks all of it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .atomic import atomic_path
from .stage import ShardData

SCHEMA_VERSION = 2  # 2: fletcher32 / sha256 on every dataset (1 had none and is recomputed)
FRAME_KEYED = ("frame", "time", "features", "valid")
TIME_CHUNK = 512  # rows per HDF5 chunk along time (a 300-frame window touches 1-2 chunks)


class ShardError(RuntimeError):
    """A shard file that cannot be read or fails its schema check."""


def _attr_value(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, np.integer, np.floating, np.bool_)):
        return value
    if value is None:
        return "null"
    return json.dumps(value, sort_keys=True, default=str)


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{" or value == "null":
        try:
            return json.loads(value)
        except (json.JSONDecodeError, TypeError):
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _content_digest(data: np.ndarray) -> str:
    if data.dtype == object or data.dtype.kind in "US":
        payload = "\x1f".join(str(x) for x in np.ravel(data)).encode()
    else:
        payload = np.ascontiguousarray(data).tobytes()
    return hashlib.sha256(f"{data.dtype.str}{data.shape}".encode() + payload).hexdigest()


def _dataset(h5: h5py.File, name: str, data: np.ndarray, frame_keyed: bool, digests: dict[str, str]) -> None:
    """Create one dataset with a checksum: fletcher32 where HDF5 allows a filter, else a sha256 digest."""
    data = np.asarray(data)
    if data.dtype.kind == "U":
        data = data.astype(object)
    if data.dtype == object:
        h5.create_dataset(name, data=data, dtype=h5py.string_dtype())
        digests[name] = _content_digest(data)
        return
    if data.ndim == 0 or data.size == 0:
        h5.create_dataset(name, data=data)
        digests[name] = _content_digest(data)
        return
    if frame_keyed:
        chunks = (min(TIME_CHUNK, data.shape[0]),) + tuple(data.shape[1:])
    else:
        chunks = True
    h5.create_dataset(name, data=data, chunks=chunks, fletcher32=True)


def finite_problems(n: int, time: np.ndarray | None, features: np.ndarray | None, valid: np.ndarray | None,
                    extras: dict[str, np.ndarray], frame_keyed: list[str] | None = None) -> list[str]:
    """Where a shard holds NaN/Inf that a reader could take for numbers (stages must never write them).

    `time` and `features` must be finite everywhere. Float extras must be finite
    where they describe something: on the rows flagged valid for frame-keyed
    extras (the faces stage marks frames without a face by NaN boxes), everywhere
    for the others (text's segment embeddings). `frame_keyed` names the
    frame-keyed extras when their length is ambiguous; otherwise length decides.
    """
    rows = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    problems = []
    checks: list[tuple[str, np.ndarray | None]] = [("time", time), ("features", features)]
    for name, arr in extras.items():
        arr = np.asarray(arr)
        keyed = (name in frame_keyed) if frame_keyed is not None else (arr.ndim >= 1 and arr.shape[0] == n)
        checks.append((name, arr[rows] if keyed and arr.shape[:1] == (n,) else arr))
    for name, arr in checks:
        if arr is None:
            continue
        arr = np.asarray(arr)
        if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
            bad = int(arr.size - np.isfinite(arr).sum())
            problems.append(f"/{name} holds {bad} NaN/Inf value(s)")
    return problems


def write_shard(path: Path, *, frame: np.ndarray, time: np.ndarray, features: np.ndarray | None,
                valid: np.ndarray | None, extras: dict[str, np.ndarray], attrs: dict[str, Any]) -> Path:
    """Write a complete shard atomically (temporary file + fsync + rename)."""
    n = int(frame.shape[0])
    if time.shape[0] != n:
        raise ShardError(f"{path}: time has {time.shape[0]} rows, frame has {n}")
    if features is not None and features.shape[0] != n:
        raise ShardError(f"{path}: features have {features.shape[0]} rows for {n} frames")
    if valid is not None and valid.shape[0] != n:
        raise ShardError(f"{path}: valid has {valid.shape[0]} rows for {n} frames")
    digests: dict[str, str] = {}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="latest") as h5:
            _dataset(h5, "frame", np.asarray(frame, dtype=np.int64), True, digests)
            _dataset(h5, "time", np.asarray(time, dtype=np.float64), True, digests)
            if features is not None:
                _dataset(h5, "features", features, True, digests)
            if valid is not None:
                _dataset(h5, "valid", np.asarray(valid, dtype=bool), True, digests)
            for name, data in extras.items():
                if name in FRAME_KEYED:
                    raise ShardError(f"{path}: extra dataset name {name!r} is reserved")
                arr = np.asarray(data)
                _dataset(h5, name, arr, arr.ndim >= 1 and arr.shape[0] == n, digests)
            h5.attrs["schema"] = SCHEMA_VERSION
            h5.attrs["n_frames"] = n
            for k, v in attrs.items():
                h5.attrs[k] = _attr_value(v)
            h5.attrs["digests"] = json.dumps(digests, sort_keys=True)
            h5.flush()
    return path


def read_attrs(path: Path, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Root attributes only, or only those in `names` (`cache ls` reads two: each attribute read
    costs ~0.4 ms in h5py, which was most of listing 3600 shards)."""
    try:
        with h5py.File(path, "r") as h5:
            attrs = h5.attrs  # each `h5.attrs` builds a new manager: take it once
            if names is not None:
                return {k: _decode_attr(attrs[k]) for k in names if k in attrs}
            return {k: _decode_attr(v) for k, v in attrs.items()}
    except (OSError, KeyError) as exc:
        raise ShardError(f"{path}: cannot open shard ({exc})") from None


def read_shard(path: Path, rows: slice | None = None) -> ShardData:
    """Read a whole shard, or only `rows` of its frame-keyed arrays."""
    sel = rows if rows is not None else slice(None)
    try:
        with h5py.File(path, "r") as h5:
            attrs = {k: _decode_attr(v) for k, v in h5.attrs.items()}
            n = int(attrs.get("n_frames", h5["frame"].shape[0]))
            # Which extras are frame-keyed is declared by the stage when it can be ambiguous (a text
            # shard may have as many segments as frames); otherwise judged by their length.
            declared = attrs.get("frame_keyed_extras")
            digests = attrs.get("digests") if isinstance(attrs.get("digests"), dict) else {}
            if int(attrs.get("schema", 0)) < SCHEMA_VERSION:
                raise ShardError(f"{path}: shard schema {attrs.get('schema')} has no checksums; "
                                 "`affpipe extract` recomputes it")
            extras = {}
            for name in h5.keys():
                if name in FRAME_KEYED:
                    continue
                ds = h5[name]
                frame_keyed = (name in declared) if isinstance(declared, list) else (ds.ndim >= 1 and ds.shape[0] == n)
                data = ds[sel] if (frame_keyed and rows is not None) else ds[()]
                if h5py.check_string_dtype(ds.dtype) is not None:
                    data = np.array([x.decode() if isinstance(x, bytes) else x for x in np.atleast_1d(data)],
                                    dtype=object)
                if name in digests and (rows is None or not frame_keyed) and _content_digest(
                        np.asarray(data).reshape(ds.shape)) != digests[name]:
                    raise ShardError(f"{path}: /{name} does not match its sha256 digest (damaged); "
                                     "`affpipe extract` recomputes it")
                extras[name] = data
            return ShardData(
                stage=str(attrs.get("stage", "")),
                key=str(attrs.get("key", "")),
                path=Path(path),
                frame=h5["frame"][sel],
                time=h5["time"][sel],
                features=h5["features"][sel] if "features" in h5 else None,
                valid=h5["valid"][sel] if "valid" in h5 else None,
                extras=extras,
                attrs=attrs,
            )
    except (OSError, KeyError) as exc:
        raise ShardError(f"{path}: cannot read shard, damaged or failing its checksum ({exc}); "
                         "`affpipe extract` recomputes it") from None


def verify_shard(path: Path) -> list[str]:
    """Read every byte and check it: schema, counts, checksums, digests, finite values.

    Returns a list of problems (empty when the shard is sound). Reading every
    dataset makes HDF5 check every fletcher32 checksum.
    """
    problems: list[str] = []
    try:
        with h5py.File(path, "r") as h5:
            for name in ("frame", "time"):
                if name not in h5:
                    problems.append(f"missing dataset /{name}")
            for name in ("trial", "stage", "key", "n_frames", "schema"):
                if name not in h5.attrs:
                    problems.append(f"missing attribute {name}")
            if problems:
                return problems
            if int(h5.attrs["schema"]) < SCHEMA_VERSION:
                return [f"schema {int(h5.attrs['schema'])} has no checksums (current {SCHEMA_VERSION}): recompute"]
            digests = json.loads(h5.attrs.get("digests", "{}"))
            n = int(h5.attrs["n_frames"])
            data: dict[str, np.ndarray] = {}
            for name in h5.keys():
                ds = h5[name]
                try:
                    data[name] = ds[()]
                except OSError as exc:
                    problems.append(f"/{name} fails its checksum ({exc})")
                    continue
                if name in digests:
                    arr = data[name]
                    if h5py.check_string_dtype(ds.dtype) is not None:
                        arr = np.array([x.decode() if isinstance(x, bytes) else x for x in np.ravel(arr)],
                                       dtype=object).reshape(np.shape(arr))
                    if _content_digest(np.asarray(arr)) != digests[name]:
                        problems.append(f"/{name} does not match its sha256 digest")
                elif ds.ndim and ds.size and not ds.fletcher32:
                    problems.append(f"/{name} has no checksum")
            for name in FRAME_KEYED:
                if name in h5 and h5[name].shape[0] != n:
                    problems.append(f"/{name} has {h5[name].shape[0]} rows, n_frames is {n}")
            declared = _decode_attr(h5.attrs["frame_keyed_extras"]) if "frame_keyed_extras" in h5.attrs else None
            extras = {k: v for k, v in data.items() if k not in FRAME_KEYED and np.asarray(v).dtype.kind in "fc"}
            problems += finite_problems(n, data.get("time"), data.get("features"), data.get("valid"), extras,
                                        declared if isinstance(declared, list) else None)
            frame = data.get("frame")
            if frame is not None and n and not np.array_equal(frame, np.arange(n)):
                problems.append("/frame is not 0..n-1")
            stem_key = Path(path).stem.rsplit(".", 1)[-1]
            if not str(h5.attrs["key"]).startswith(stem_key):
                problems.append(f"key attribute {h5.attrs['key']} does not match file name")
    except (OSError, KeyError, ValueError, TypeError) as exc:
        problems.append(f"cannot open: {exc}")
    return problems
