"""pipeline.media.decode on the real clips and on videos written here (frame counts, times, errors, audio offset)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.media.decode import iter_frames, probe_video, read_audio
from synthetic.media import beep_track, frame_index, moving_frames, tone, write_audio, write_video
from pipeline.engine.stage import StageError

av = pytest.importorskip("av")


def _clips(media: Path) -> list[Path]:
    return sorted(media.glob("cremad/*.flv")) + sorted(media.glob("grid/*.mpg"))


def _pyav_frames(path: Path) -> tuple[int, np.ndarray]:
    """An independent decoder's count and times (seconds from the video stream's start)."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        t0 = vs.start_time or 0
        times = [float((f.pts - t0) * vs.time_base) for f in c.decode(vs)]
    return len(times), np.sort(np.asarray(times))


def _pyav_rgb(path: Path) -> np.ndarray:
    """Every frame FFmpeg presents, as PyAV converts it to RGB."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


def _frames_read(path: Path, n: int) -> np.ndarray:
    return np.concatenate([chunk for _, chunk in iter_frames(path, n, chunk=16)])


def _write_with_discarded_lead(path: Path, n: int, lead: int, fps: int, codec: str) -> Path:
    """An MP4 whose first `lead` packets have negative timestamps (encoder priming).

    The MP4 muxer turns them into an edit list; FFmpeg's demuxer flags those packets
    discard and the decoder drops their pictures, so `n - lead` frames are presented,
    source frames lead..n-1, at 0, 1/fps, ...
    """
    from fractions import Fraction

    tick = 1000
    tb = Fraction(1, fps * tick)
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt, vs.bit_rate = 96, 64, "yuv420p", 2_000_000
        vs.time_base = vs.codec_context.time_base = tb

        def mux(packets) -> None:
            for pkt in packets:
                pkt.pts -= lead * tick
                pkt.dts -= lead * tick
                out.mux(pkt)

        for i, img in enumerate(moving_frames(n)):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i * tick, tb
            mux(vs.encode(frame))
        mux(vs.encode())
    return path


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_leading_negative_pts_packets_are_not_frames(tmp_path, codec):
    # decord read this file as 98 frames (the last three repeating frame 94) stamped with
    # the first 98 packet times, i.e. every frame 125 ms early.
    path = _write_with_discarded_lead(tmp_path / f"primed-{codec}.mp4", n=98, lead=3, fps=24, codec=codec)
    with av.open(str(path)) as c:
        stamps = sorted(pkt.pts for pkt in c.demux(c.streams.video[0]) if pkt.size)
    assert stamps[:4] == [-3000, -2000, -1000, 0]
    p = probe_video(path)
    n_ref, t_ref = _pyav_frames(path)
    assert (p.n_decoded, n_ref, p.n_container) == (95, 95, 98)
    np.testing.assert_array_equal(p.time, t_ref)
    np.testing.assert_allclose(p.time, np.arange(95) / 24, atol=1e-12)
    frames = _frames_read(path, p.n_decoded)
    np.testing.assert_array_equal(frames, _pyav_rgb(path))
    assert [frame_index(f) for f in frames] == list(range(3, 98))


def test_frames_and_times_equal_pyav_frame_by_frame_on_all_shared_clips(shared_media):
    # decord's rows 0-62 of every GRID clip were FFmpeg's frames 12-74 (then frame 74 twelve times).
    for clip in _clips(shared_media):
        p = probe_video(clip, isolate=False)
        reference = _pyav_rgb(clip)
        assert p.n_decoded == len(reference), clip.name
        np.testing.assert_array_equal(_frames_read(clip, p.n_decoded), reference, err_msg=clip.name)


def test_probe_counts_match_an_independent_decoder_on_all_shared_clips(shared_media):
    clips = _clips(shared_media)
    assert len(clips) == 13
    for clip in clips:
        p = probe_video(clip, isolate=False)
        n_ref, t_ref = _pyav_frames(clip)
        assert p.n_decoded == n_ref, clip.name
        assert p.n_decoded <= p.n_container
        assert p.time.dtype == np.float64 and p.time.shape == (p.n_decoded,)
        assert np.all(np.diff(p.time) > 0), f"{clip.name}: timestamps not increasing"
        np.testing.assert_allclose(p.time, t_ref, rtol=0, atol=1e-12, err_msg=clip.name)
        assert p.has_audio and p.audio_sample_rate == 44100
        if clip.suffix == ".flv":
            assert (p.width, p.height) == (480, 360) and abs(p.fps - 29.97) < 0.01
            # CREMA-D's FLV video stream starts 27 ms after its audio stream
            assert p.video_start == pytest.approx(0.027) and p.audio_start == pytest.approx(-0.027, abs=1e-4)
        else:
            assert (p.width, p.height) == (360, 288) and p.fps == 25.0 and p.n_decoded == 75


def test_isolated_probe_equals_in_process_probe(shared_media):
    clip = shared_media / "grid" / "bbaf2n.mpg"
    a, b = probe_video(clip), probe_video(clip, isolate=False)
    assert (a.n_decoded, a.n_container, a.fps, a.width, a.height, a.audio_start) == \
           (b.n_decoded, b.n_container, b.fps, b.width, b.height, b.audio_start)
    np.testing.assert_array_equal(a.time, b.time)


def test_truncated_clips_probe_shorter_or_fail_cleanly(shared_media, tmp_path):
    clip = shared_media / "cremad" / "1001_DFA_ANG_XX.flv"
    full = probe_video(clip, isolate=False).n_decoded
    data = clip.read_bytes()
    cut = tmp_path / "cut.flv"
    cut.write_bytes(data[: len(data) // 2])
    p = probe_video(cut)  # isolated: a hang would be killed and reported, never block the test
    assert 0 < p.n_decoded < full
    frames = sum(len(c) for _, c in iter_frames(cut, p.n_decoded, chunk=16))
    assert frames == p.n_decoded

    # An MP4 with its index first, cut short: packets listed that are not in the file.
    mp4 = write_video(tmp_path / "fs.mp4", moving_frames(60), 30, codec="mpeg4",
                      container_options={"movflags": "faststart"})
    body = mp4.read_bytes()
    for frac in (0.3, 0.9):
        (tmp_path / "cut.mp4").write_bytes(body[: int(len(body) * frac)])
        try:
            p = probe_video(tmp_path / "cut.mp4")
        except StageError as exc:
            assert exc.kind == "corrupt-media" and str(exc).startswith(str(tmp_path / "cut.mp4"))
            assert "\n" not in str(exc)
        else:
            assert p.n_decoded < 60


def test_hung_decoder_is_abandoned_with_corrupt_media(shared_media, tmp_path):
    import os

    hang = tmp_path / "never-written.mp4"
    os.mkfifo(hang)  # opening a FIFO nobody writes blocks forever: a decoder that really hangs
    with pytest.raises(StageError) as err:
        probe_video(hang, timeout=2)
    assert err.value.kind == "corrupt-media" and "did not finish" in str(err.value)
    assert probe_video(shared_media / "grid" / "bbaf2n.mpg").n_decoded > 0  # the next probe gets a fresh child


def test_missing_and_non_video_files(shared_media, tmp_path):
    missing = tmp_path / "nope.mp4"
    for call in (lambda: probe_video(missing), lambda: read_audio(missing),
                 lambda: list(iter_frames(missing, 3))):
        with pytest.raises(StageError) as err:
            call()
        assert err.value.kind == "missing-file" and str(err.value) == f"{missing}: file not found"
    text = shared_media / "grid" / "transcripts.csv"
    wav = write_audio(tmp_path / "speech.wav", tone(0.5))
    for path in (text, wav):
        with pytest.raises(StageError) as err:
            probe_video(path)
        assert err.value.kind == "corrupt-media" and str(err.value).startswith(f"{path}: ")
        assert "\n" not in str(err.value)


def test_iter_frames_returns_every_frame_in_order_in_bounded_chunks(tmp_path):
    path = write_video(tmp_path / "idx.mkv", moving_frames(70), 25, codec="libx264")  # B-frames: reordering
    p = probe_video(path, isolate=False)
    assert p.n_decoded == 70
    seen, starts = [], []
    for start, chunk in iter_frames(path, p.n_decoded, chunk=16):
        assert chunk.dtype == np.uint8 and chunk.shape[1:] == (64, 96, 3) and len(chunk) <= 16
        starts.append(start)
        seen.extend(frame_index(f) for f in chunk)
    assert starts == [0, 16, 32, 48, 64]
    assert seen == list(range(70))
    # Fewer than decode: stops there. More than decode: one clear error, no hang.
    assert sum(len(c) for _, c in iter_frames(path, 20, chunk=64)) == 20
    with pytest.raises(StageError) as err:
        list(iter_frames(path, 75, chunk=64))
    assert err.value.kind == "corrupt-media" and "only 70 frames decode" in str(err.value)


def test_a_second_reader_of_a_short_video_gets_the_same_frames(tmp_path, monkeypatch):
    """Frames kept for the next reader (faces then visual) are exactly what decoding gives, for any
    range; readers cannot change them for each other; a file rewritten in place is decoded anew."""
    from pipeline.media import decode

    path = write_video(tmp_path / "idx.mkv", moving_frames(70), 25, codec="libx264")
    p = probe_video(path, isolate=False)
    monkeypatch.setattr(decode, "FRAME_CACHE_MB", 0)
    fresh = {(n, start): list(iter_frames(path, n, chunk=16, start=start, times=p.time))
             for n, start in ((70, 0), (70, 21), (30, 5))}
    monkeypatch.setattr(decode, "FRAME_CACHE_MB", 64)
    decode.FRAME_CACHE.clear()
    first = list(iter_frames(path, 70, chunk=16))
    first[0][1][:] = 0  # a reader that scribbles on its chunk
    for (n, start), want in fresh.items():
        got = list(iter_frames(path, n, chunk=16, start=start, times=p.time))
        assert [a for a, _ in got] == [a for a, _ in want]
        assert all(np.array_equal(g, w) and g.flags.writeable for (_, g), (_, w) in zip(got, want))
    # same path, same length, other pictures: the content identity does not match, so it decodes
    path.write_bytes(write_video(tmp_path / "other.mkv", moving_frames(70)[::-1], 25, codec="libx264").read_bytes())
    assert [frame_index(f) for _, c in iter_frames(path, 70, chunk=16) for f in c] == list(range(69, -1, -1))
    # a video whose frames exceed the budget is not kept (70 x 64 x 96 RGB is 1.3 MB)
    monkeypatch.setattr(decode, "FRAME_CACHE_MB", 1)
    decode.FRAME_CACHE.clear()
    list(iter_frames(path, 70, chunk=16))
    assert not decode.FRAME_CACHE._entries


def test_avi_with_b_frames_gets_an_increasing_grid(tmp_path):
    # AVI stores no presentation times: PyAV hands B-frame pictures packet stamps in decode
    # order (1, 4, 3, 5, 2, ...); the probe's grid is those stamps sorted.
    path = write_video(tmp_path / "b.avi", moving_frames(30), 25, codec="libx264")
    with av.open(str(path)) as c:
        raw = [f.pts for f in c.decode(c.streams.video[0])]
    assert raw != sorted(raw)
    p = probe_video(path, isolate=False)
    assert p.n_decoded == 30
    np.testing.assert_allclose(np.diff(p.time), 0.04, atol=1e-9)
    assert [frame_index(f) for f in _frames_read(path, 30)] == list(range(30))


def test_variable_frame_rate_times_come_from_timestamps(tmp_path):
    gaps = np.where(np.arange(39) % 3 == 0, 0.1, 0.02)
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    path = write_video(tmp_path / "vfr.mkv", moving_frames(40), 25, times=times)
    p = probe_video(path, isolate=False)
    assert p.n_decoded == 40
    np.testing.assert_allclose(p.time, times, atol=1e-6)


def test_audio_start_offset_places_a_beep_at_its_video_time(tmp_path):
    beep = beep_track(1.5, 16000, [(0.7, 0.1)])  # 0.7 s into the audio track
    late = write_video(tmp_path / "late.mkv", moving_frames(50), 25, audio=beep,
                       audio_codec="pcm_s16le", audio_start=0.5)
    track = read_audio(late)
    assert track.sample_rate == 16000 and track.start == pytest.approx(0.5)
    loud = np.flatnonzero(np.abs(track.samples) > 0.1)
    assert (loud[0] / 16000 + track.start) == pytest.approx(1.2, abs=1e-3)  # 0.5 + 0.7 on the video clock
    assert track.index_at(1.2) == pytest.approx(loud[0], abs=2)
    assert probe_video(late, isolate=False).audio_start == pytest.approx(0.5)

    # AAC in MP4: the decoder keeps this stream's 1024 priming samples, and the start says so.
    aac = write_video(tmp_path / "late.mp4", moving_frames(50), 25, audio=beep, audio_start=0.5)
    track = read_audio(aac)
    loud = np.flatnonzero(np.abs(track.samples) > 0.1)
    assert track.start == pytest.approx(0.5 - 1024 / 16000, abs=1e-4)
    assert (loud[0] / 16000 + track.start) == pytest.approx(1.2, abs=0.01)


def test_no_audio_stream_is_reported_as_such(tmp_path):
    path = write_video(tmp_path / "mute.mp4", moving_frames(10), 25)
    p = probe_video(path, isolate=False)
    assert not p.has_audio and p.audio_start is None and p.audio_sample_rate is None
    with pytest.raises(StageError) as err:
        read_audio(path)
    assert err.value.kind == "no-audio" and str(err.value) == f"{path}: no audio stream"
