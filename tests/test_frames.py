"""Frame sampling: middle of T equal segments, decoded at reduced size with decord, PyAV for GIFs, clear errors."""

import numpy as np
import pytest

from pipeline.frames import SamplingConfig, VideoDecodeError, sample_frames, segment_indices
from pipeline.sample_videos import synthetic_frames, write_broken_files, write_video


def test_middle_of_equal_segments():
    # 160 frames, 16 segments of 9.9375: the middle of each.
    idx = segment_indices(160, 16)
    assert idx[0] == 4 and idx[-1] == 153 and len(idx) == 16
    assert np.all(np.diff(idx) > 0)
    assert list(segment_indices(9, 4)) == [1, 3, 5, 7]


def test_short_videos_repeat_frames():
    idx = segment_indices(5, 16)
    assert len(idx) == 16 and set(idx) <= set(range(5)) and np.all(np.diff(idx) >= 0)


def test_random_mode_stays_inside_segments():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = segment_indices(100, 10, mode="random", rng=rng)
        assert np.all((idx >= np.arange(10) * 10) & (idx < np.arange(1, 11) * 10))


def test_clip_bounds_are_respected(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), num_frames=96, fps=24)
    video = sample_frames(path, SamplingConfig(num_frames=4), start_s=1.0, end_s=2.0)
    assert np.all((video.indices >= 24) & (video.indices <= 47))
    with pytest.raises(VideoDecodeError, match="past the end"):
        sample_frames(path, SamplingConfig(num_frames=4), start_s=10.0)


def test_decoded_frames_match_the_source_content(tmp_path):
    width, height, count = 640, 360, 48
    path = write_video(str(tmp_path / "wide.mp4"), width, height, count, 24, seed=3)
    video = sample_frames(path, SamplingConfig(num_frames=4, image_size=336))
    assert video.frames.shape == (4, 336, 336, 3) and video.frames.dtype == np.uint8
    assert (video.info.width, video.info.height, video.info.frame_count) == (width, height, count)
    assert video.info.fps == pytest.approx(24) and video.info.duration_s == pytest.approx(2.0)
    source = synthetic_frames(width, height, count, seed=3)
    for frame, index in zip(video.frames, video.indices):
        # Same crop done at full size by hand: short side 360 -> 336, centre square.
        scale = 336 / 360
        crop = source[index, :, int((width - 360) / 2) : int((width + 360) / 2)]
        ys = (np.arange(336) / scale).astype(int)
        reference = crop[ys][:, ys]
        assert np.abs(frame.astype(int) - reference.astype(int)).mean() < 12  # codec + scaler differences only


def test_the_moving_square_moves(tmp_path):
    path = write_video(str(tmp_path / "m.mp4"), 320, 320, 40, 20, seed=1)
    video = sample_frames(path, SamplingConfig(num_frames=4))
    centres = [np.argwhere(f.min(axis=-1) > 240)[:, 1].mean() for f in video.frames]
    assert centres == sorted(centres) and centres[-1] - centres[0] > 100


def test_animated_gif_falls_back_to_pyav(tmp_path):
    path = write_video(str(tmp_path / "a.gif"), 160, 120, 12, 10, codec="gif")
    video = sample_frames(path, SamplingConfig(num_frames=8))
    assert video.info.decoder == "pyav" and video.frames.shape == (8, 336, 336, 3)
    assert video.info.frame_count == 12


def test_webm_and_bytes_input(tmp_path):
    path = write_video(str(tmp_path / "v.webm"), 320, 240, 30, 24, codec="libvpx-vp9")
    from_bytes = sample_frames(open(path, "rb").read(), SamplingConfig(num_frames=4))
    from_path = sample_frames(path, SamplingConfig(num_frames=4))
    np.testing.assert_array_equal(from_bytes.frames, from_path.frames)


@pytest.mark.parametrize("kind", ["empty", "text", "random", "truncated"])
def test_broken_files_raise_a_decode_error(tmp_path, kind):
    path = write_broken_files(str(tmp_path))[kind]
    with pytest.raises(VideoDecodeError) as info:
        sample_frames(path, SamplingConfig(num_frames=4))
    assert info.value.reason in {"empty", "undecodable", "decode_failed"}
    if kind == "empty":
        assert info.value.reason == "empty"


def test_truncated_faststart_mp4_is_an_error_not_a_partial_video(tmp_path):
    data = open(write_video(str(tmp_path / "f.mp4"), num_frames=48, faststart=True), "rb").read()
    with pytest.raises(VideoDecodeError):
        sample_frames(data[: len(data) // 3], SamplingConfig(num_frames=4))


def test_sampling_config_is_validated():
    with pytest.raises(ValueError, match="num_frames.*mode"):
        SamplingConfig(num_frames=0, mode="every")
