"""Frame sampling: middle of T equal segments, decoded at reduced size (decord, or PyAV in one pass), clear errors."""

import numpy as np
import pytest

from pipeline.frames import DECODERS, SamplingConfig, VideoDecodeError, sample_frames, segment_indices
from pipeline.generated_videos import synthetic_frames, write_broken_files, write_video


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


def reference_clip_indices(num_total, fps, start_s, end_s, num_segments):
    """The reference's rule (its recaption dataset's ``get_index``), written out here as the specification."""
    start_idx = max(0, round(start_s * fps))
    end_idx = min(round(end_s * fps), num_total - 1)
    seg = float(end_idx - start_idx) / num_segments
    return [int(start_idx + seg / 2 + np.round(seg * i)) for i in range(num_segments)]


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_clip_bounds_follow_the_reference_rule(tmp_path, decoder):
    path = write_video(str(tmp_path / "v.mp4"), num_frames=96, fps=24)
    cfg = SamplingConfig(num_frames=4, decoder=decoder)
    for start_s, end_s in [(1.0, 2.0), (0.3, 1.77), (2.5, 9.0)]:  # the last one ends past the video: clamped
        video = sample_frames(path, cfg, start_s=start_s, end_s=end_s)
        assert list(video.indices) == reference_clip_indices(96, 24, start_s, end_s, 4), (start_s, end_s)
    assert list(sample_frames(path, cfg, start_s=1.0, end_s=2.0).indices) == [27, 33, 39, 45]
    with pytest.raises(VideoDecodeError, match="past the end"):
        sample_frames(path, cfg, start_s=10.0)


def test_random_clip_bounds_match_the_reference_rule():
    from pipeline.sampling import clip_bounds as _bounds

    rng = np.random.default_rng(0)
    for _ in range(500):
        num_total, fps = int(rng.integers(10, 3000)), float(rng.choice([23.976, 24, 25, 29.97, 30, 60]))
        start_s = float(rng.uniform(0, num_total / fps * 0.8))
        end_s = float(rng.uniform(start_s + 0.2, num_total / fps * 1.1))
        first, last = _bounds(fps, num_total, start_s, end_s)
        got = list(segment_indices(num_total, 16, first, last))
        assert got == reference_clip_indices(num_total, fps, start_s, end_s, 16)


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_decoded_frames_match_the_source_content(tmp_path, decoder):
    width, height, count = 640, 360, 48
    path = write_video(str(tmp_path / "wide.mp4"), width, height, count, 24, seed=3)
    video = sample_frames(path, SamplingConfig(num_frames=4, image_size=336, decoder=decoder))
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


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_animated_gif_is_read_by_pyav(tmp_path, decoder):
    path = write_video(str(tmp_path / "a.gif"), 160, 120, 12, 10, codec="gif")
    video = sample_frames(path, SamplingConfig(num_frames=8, decoder=decoder))
    assert video.info.decoder == "pyav" and video.frames.shape == (8, 336, 336, 3)
    assert video.info.frame_count == 12


def test_webm_and_bytes_input(tmp_path):
    path = write_video(str(tmp_path / "v.webm"), 320, 240, 30, 24, codec="libvpx-vp9")
    from_bytes = sample_frames(open(path, "rb").read(), SamplingConfig(num_frames=4))
    from_path = sample_frames(path, SamplingConfig(num_frames=4))
    np.testing.assert_array_equal(from_bytes.frames, from_path.frames)


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
@pytest.mark.parametrize("kind", ["empty", "text", "random", "truncated"])
def test_broken_files_raise_a_decode_error(tmp_path, kind, decoder):
    path = write_broken_files(str(tmp_path))[kind]
    with pytest.raises(VideoDecodeError) as info:
        sample_frames(path, SamplingConfig(num_frames=4, decoder=decoder))
    # Zero bytes say so; text, noise and a file cut before its index (moov) cannot be opened by either decoder.
    assert info.value.reason == ("empty" if kind == "empty" else "undecodable")
    assert str(info.value).startswith(info.value.reason + ": ")


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_truncated_faststart_mp4_is_an_error_not_a_partial_video(tmp_path, decoder):
    data = open(write_video(str(tmp_path / "f.mp4"), num_frames=48, faststart=True), "rb").read()
    with pytest.raises(VideoDecodeError):
        sample_frames(data[: len(data) // 3], SamplingConfig(num_frames=4, decoder=decoder))


def test_sampling_config_is_validated():
    with pytest.raises(ValueError, match="(?s)3 validation errors.*num_frames.*mode.*decoder"):  # all at once
        SamplingConfig(num_frames=0, mode="every", decoder="opencv")


@pytest.mark.parametrize("name, codec, width, height, count, gop", [
    ("long.mp4", "libx264", 320, 180, 300, 25),  # 12 keyframes: the PyAV path seeks between samples
    ("short.mp4", "libx264", 160, 120, 9, 250),  # fewer frames than samples: frames repeat
    ("clip.mkv", "libx264", 256, 256, 40, 12),
    ("clip.webm", "libvpx-vp9", 320, 240, 30, 250),
])
def test_both_decoders_sample_the_same_frames(tmp_path, name, codec, width, height, count, gop):
    path = write_video(str(tmp_path / name), width, height, count, 24, codec=codec, seed=7, gop=gop)
    pyav = sample_frames(path, SamplingConfig(num_frames=16, decoder="pyav"))
    decord = sample_frames(path, SamplingConfig(num_frames=16, decoder="decord"))
    assert pyav.info.frame_count == decord.info.frame_count == count
    assert list(pyav.indices) == list(decord.indices) == list(segment_indices(count, 16))
    # Same frames, scaled by different filters: about one grey level apart; a wrong frame is tens of levels off.
    per_frame = np.abs(pyav.frames.astype(int) - decord.frames.astype(int)).mean(axis=(1, 2, 3))
    assert per_frame.max() < 4, per_frame


def test_a_seek_lands_on_the_frame_asked_for(tmp_path):
    count = 96
    path = write_video(str(tmp_path / "seek.mp4"), 320, 320, count, 24, seed=2, gop=12)
    video = sample_frames(path, SamplingConfig(num_frames=8, image_size=320, decoder="pyav"))
    source = synthetic_frames(320, 320, count, seed=2)
    for frame, index in zip(video.frames, video.indices):
        errors = [np.abs(frame.astype(int) - source[i].astype(int)).mean() for i in (index - 1, index, index + 1)]
        assert errors[1] < min(errors[0], errors[2]), (index, errors)  # the asked frame, not a neighbour


def reference_chain(frame: np.ndarray, side: int = 336) -> np.ndarray:
    """The reference's pixel path for one full-resolution frame, written out here from its definition:
    resize_crop_longshort (short side max(S, min(short, int(min(640, long) / (long / short))))), the CLIP
    processor's shortest-edge resize (long side truncated), both PIL bicubic on uint8, then its centre crop."""
    from PIL import Image

    def shortest_edge(image, size):
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        return image.resize((size, new_long) if w <= h else (new_long, size), Image.BICUBIC)

    image = Image.fromarray(frame)
    short, long = min(image.size), max(image.size)
    image = shortest_edge(image, max(side, min(short, int(min(640, long) / (long / short)))))
    image = shortest_edge(image, side)
    array = np.asarray(image)
    top, left = (array.shape[0] - side) // 2, (array.shape[1] - side) // 2
    return array[top : top + side, left : left + side]


def full_frames(path, indices):
    import av

    wanted = set(int(i) for i in indices)
    with av.open(path) as container:
        frames = {i: f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i in wanted}
    return np.stack([frames[int(i)] for i in indices])


@pytest.mark.parametrize("size", [pytest.param((3840, 2160), marks=pytest.mark.slow), (1280, 720), (720, 1280)],
                         ids=["4K", "720p", "9:16"])
def test_reference_resize_gives_the_reference_pixels(tmp_path, size):
    path = write_video(str(tmp_path / "clip.mp4"), *size, num_frames=12, fps=12, detail=True, seed=5)
    for decoder in DECODERS:
        video = sample_frames(path, SamplingConfig(num_frames=4, decoder=decoder, resize="reference"))
        expected = np.stack([reference_chain(f) for f in full_frames(path, video.indices)])
        assert video.frames.shape == expected.shape == (4, 336, 336, 3)
        gap = np.abs(video.frames.astype(int) - expected.astype(int)).mean()
        assert gap < 1.0, (decoder, gap)
        fast = sample_frames(path, SamplingConfig(num_frames=4, decoder=decoder))
        assert list(fast.indices) == list(video.indices)  # the same frames, only the pixels' path differs
        assert np.abs(fast.frames.astype(int) - expected.astype(int)).mean() < 12


def test_fast_resize_cuts_the_reference_square():
    from model.image_geometry import center_offsets, reference_scaled_size

    # 16:9 at any resolution ends 597x336, cut from x = 130 (not 598 and 131); 9:16 from y = 130.
    for size in [(3840, 2160), (1920, 1080), (1280, 720)]:
        assert reference_scaled_size(*size, 336) == (597, 336) and center_offsets(597, 336, 336) == (0, 130)
    assert reference_scaled_size(1080, 1920, 336) == (336, 597)
    assert reference_scaled_size(160, 120, 336) == (448, 336)  # small clips are scaled up to 336 first
    assert reference_scaled_size(4096, 1716, 336) == (802, 336)  # 2.39:1: step 1 keeps the short side at 336


def test_resize_mode_is_a_checked_setting_and_a_job_flag():
    import os
    import sys

    with pytest.raises(ValueError, match="resize\n  Input should be 'fast' or 'reference'"):
        SamplingConfig(resize="nearest")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs"))
    from recaption import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["--input", "l.txt", "--output", "o", "--resize", "reference"]))
    assert cfg.sampling.resize == "reference" and SamplingConfig().resize == "fast"


def test_random_frame_picks_follow_the_seed(tmp_path):
    import pyarrow as pa

    from pipeline import schema as S
    from pipeline.sampler import FrameSampler

    path = write_video(str(tmp_path / "long.mp4"), 64, 64, 240, 24)
    batch = pa.table({S.VIDEO_ID: ["v"], S.URI: [path], S.START_S: pa.nulls(1, pa.float64()),
                      S.END_S: pa.nulls(1, pa.float64()), S.ERROR: pa.nulls(1, pa.string()),
                      S.ERROR_STAGE: pa.nulls(1, pa.string()), S.ERROR_REASON: pa.nulls(1, pa.string())})
    cfg = SamplingConfig(num_frames=8, image_size=32, mode="random")

    def frames(seed):
        sampler = FrameSampler(cfg, seed=seed)
        return [sampler(batch).column(S.FRAMES).to_pylist()[0] for _ in range(3)]  # three epochs

    first, again, other = frames(7), frames(7), frames(8)
    assert first == again  # the same run draws the same frames, epoch after epoch
    assert first != other and len(set(first)) > 1  # another seed draws others; epochs differ from each other
