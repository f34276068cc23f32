"""read_clips on synthetic videos written with PyAV: counts, timestamps, resampling, rotation,
and clear errors for bad arguments, corrupt and truncated files."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av", reason="video decoding is the `video` extra")

from foveal.clients.video import VideoReadError, probe, read_clips
from synthetic_video import drifting_grating, frame_index_video, write_video


def brightness(clip) -> list[int]:
    """Frame index modulo 25, as encoded by frame_index_video (brightness 10*(i % 25) + 2)."""
    return [round((v - 2) / 10) for v in clip.frames.mean(axis=(1, 2, 3))]


def indices(start: int, count: int) -> list[int]:
    return [i % 25 for i in range(start, start + count)]


@pytest.fixture(scope="module")
def video_25fps(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "index.mp4", frame_index_video(50), fps=25)


def test_probe(video_25fps):
    info = probe(video_25fps)
    assert (info.fps, info.frames, info.width, info.height) == (25.0, 50, 48, 32)
    assert info.duration == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("clip_len,stride", [(8, 8), (8, 4), (5, 12), (50, 1)])
def test_native_frames_clip_counts_and_order(video_25fps, clip_len, stride):
    clips = list(read_clips(video_25fps, clip_len, stride))
    expected = (50 - clip_len) // stride + 1
    assert len(clips) == expected
    for i, clip in enumerate(clips):
        assert clip.index == i
        assert clip.frames.shape == (clip_len, 32, 48, 3) and clip.frames.dtype == np.uint8
        assert brightness(clip) == indices(i * stride, clip_len)
        assert clip.timestamps == pytest.approx(np.arange(i * stride, i * stride + clip_len) / 25)


def test_resampled_to_lower_fps(video_25fps):
    clips = list(read_clips(video_25fps, 4, 4, fps=5))
    assert len(clips) == 2  # 10 samples at 5 fps in 2 s: two whole clips of 4
    assert clips[1].timestamps == pytest.approx([0.8, 1.0, 1.2, 1.4])
    assert brightness(clips[0]) == [0, 5, 10, 15]  # every 5th source frame


def test_resampled_to_higher_fps_repeats_frames(video_25fps):
    clip = next(iter(read_clips(video_25fps, 6, 6, fps=50)))
    assert brightness(clip) == [0, 0, 1, 1, 2, 2]


def test_variable_frame_rate_samples_by_presentation_time(tmp_path):
    times = [0.0, 0.1, 0.15, 0.5, 0.55, 0.6, 1.0, 1.2]
    path = write_video(tmp_path / "vfr.mkv", frame_index_video(8), times=times)
    clips = list(read_clips(path, 3, 3, fps=10))
    # sample at t shows the last frame presented at or before t
    assert [brightness(c) for c in clips] == [[0, 1, 2], [2, 2, 3], [5, 5, 5], [5, 6, 6]]


def test_resize(video_25fps):
    clip = next(iter(read_clips(video_25fps, 2, 2, size=(16, 20))))
    assert clip.frames.shape == (2, 16, 20, 3)


def test_rotation_metadata_is_applied(tmp_path):
    frames = np.zeros((4, 16, 32, 3), np.uint8)
    frames[:, :4, :4] = 255  # a bright top-left corner
    path = write_video(tmp_path / "rotated.mp4", frames, rotation=90)
    assert probe(path).rotation == 90
    clip = next(iter(read_clips(path, 2, 2)))
    assert clip.frames.shape == (2, 32, 16, 3)
    # rotating 90 degrees counter-clockwise moves the top-left corner to the bottom-left
    assert clip.frames[0, -4:, :4].mean() > 200 and clip.frames[0, :4, :4].mean() < 50


def test_long_gaps_are_skipped_by_seeking(tmp_path):
    path = write_video(tmp_path / "long.mp4", frame_index_video(250), fps=25)
    clips = list(read_clips(path, 2, 125, fps=25))  # 5 s between clip starts
    assert [c.start for c in clips] == pytest.approx([0.0, 5.0])
    assert brightness(clips[1]) == indices(125, 2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(clip_len=0, stride=1), "clip_len must be a positive int"),
    (dict(clip_len=4, stride=0), "stride must be a positive int"),
    (dict(clip_len=4, stride=1, fps=0), "fps must be a positive number"),
    (dict(clip_len=4, stride=1, size=(16,)), r"size must be \(height, width\)"),
])
def test_bad_arguments(video_25fps, kwargs, message):
    with pytest.raises(ValueError, match=message):
        next(iter(read_clips(video_25fps, **kwargs)))


def test_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_bytes(b"this is not a video" * 10)
    with pytest.raises(VideoReadError, match=r"notes.mp4: cannot open as a video"):
        list(read_clips(path, 4, 4))


def test_truncated_file_names_file_and_frame(tmp_path):
    path = write_video(tmp_path / "cut.mkv", drifting_grating(100, 32, 48), fps=25)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match=r"cut.mkv: truncated or corrupt: the last "
                                             r"decodable frame \(frame \d+, t=[\d.]+s\)"):
        list(read_clips(path, 4, 4))


def test_corrupt_data_names_file_and_frame(tmp_path):
    path = write_video(tmp_path / "noise.mp4", drifting_grating(100, 32, 48), fps=25)
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third:third + 2000] = np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(VideoReadError, match=r"noise.mp4: (corrupt data after frame \d+ "
                                             r"\(t=[\d.]+s\)|truncated or corrupt)"):
        list(read_clips(path, 4, 4))
