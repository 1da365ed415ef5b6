"""Frame sampling beyond the decode-all floor (pipeline.decode_pyav): exact frames decode only the packets the
sampled frames depend on, with pixels identical to decoding every frame; ``snap: reference_frames`` moves a
segment's frame to its nearest I/P frame, never outside the segment."""

import av
import numpy as np
import pytest
from pydantic import ValidationError

import pipeline.decode_pyav as decode_pyav
from pipeline.frames import (SamplingConfig, decode_size, sample_frames, segment_indices, segment_ranges,
                             to_model_frames)
from pipeline.generated_videos import write_video

# name: write_video options. libx264 with B-frames (b-pyramid from 2 on), an open GOP, irregular frame times.
CLIPS = {
    "b-frames": {"bframes": 3, "gop": 250},
    "b-pyramid open-gop": {"bframes": 3, "gop": 24, "open_gop": True},
    "vfr": {"bframes": 2, "vfr": True},
    "i-p only": {"gop": 30},
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {name: write_video(str(folder / f"{i}.mp4"), 160, 96, 120, 24, seed=i, **options)
            for i, (name, options) in enumerate(CLIPS.items())}


def picture_types(path: str) -> list[str]:
    """'I', 'P' or 'B' per frame, display order, decoding every frame."""
    with av.open(path) as container:
        return [{1: "I", 2: "P", 3: "B"}.get(int(frame.pict_type), "?") for frame in container.decode(video=0)]


def every_frame(path: str, cfg: SamplingConfig) -> list[np.ndarray]:
    """The decode-all floor: every frame decoded in order, each converted at the sampler's size."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        size = decode_size(stream.codec_context.width, stream.codec_context.height, cfg)
        return [decode_pyav._convert(frame, size) for frame in container.decode(stream)]


@pytest.fixture
def decoded_count(monkeypatch):
    """How many frames the decoder hands back (skipped packets produce none)."""
    count = {"frames": 0}
    original = decode_pyav._frames

    def counting(*args, **kwargs):
        for frame in original(*args, **kwargs):
            count["frames"] += 1
            yield frame

    monkeypatch.setattr(decode_pyav, "_frames", counting)
    return count


@pytest.mark.parametrize("name", list(CLIPS))
@pytest.mark.parametrize("bounds", [(None, None), (1.0, 3.5)])
def test_exact_frames_equal_decoding_every_frame(clips, name, bounds):
    cfg = SamplingConfig(num_frames=16, decoder="pyav")
    video = sample_frames(clips[name], cfg, *bounds)
    frames = every_frame(clips[name], cfg)
    assert np.array_equal(video.frames, to_model_frames(np.stack([frames[i] for i in video.indices]), cfg))


@pytest.mark.parametrize("threads", [1, 2])
def test_exact_frames_skip_the_non_reference_frames_no_sample_needs(clips, decoded_count, threads):
    path = clips["b-frames"]
    types = picture_types(path)
    cfg = SamplingConfig(num_frames=8, decoder="pyav", decode_threads=threads)
    video = sample_frames(path, cfg)
    assert list(video.indices) == list(segment_indices(len(types), 8))
    # Frames up to the last sample, less the B-frames (non-reference here but the middle of each pyramid) that
    # hold no sample: fewer than decode-all's, more than the I/P frames alone.
    up_to_last = int(video.indices[-1]) + 1
    assert decoded_count["frames"] < up_to_last
    assert decoded_count["frames"] >= sum(t != "B" for t in types[:up_to_last])


def test_a_codec_that_cannot_skip_decodes_every_frame_on_the_way(tmp_path, decoded_count):
    path = write_video(str(tmp_path / "v.webm"), 96, 64, 40, 24, codec="libvpx-vp9")
    assert decode_pyav.skip_modes("vp9") == ("DEFAULT", None)
    cfg = SamplingConfig(num_frames=4, decoder="pyav", snap="reference_frames")
    video = sample_frames(path, cfg)
    frames = every_frame(path, cfg)
    assert list(video.indices) == list(segment_indices(40, 4))  # no snapping without picture-type skipping
    assert np.array_equal(video.frames, to_model_frames(np.stack([frames[i] for i in video.indices]), cfg))


@pytest.mark.parametrize("name", ["b-frames", "b-pyramid open-gop", "vfr"])
def test_snap_moves_a_frame_only_to_an_i_or_p_frame_of_its_own_segment(clips, name):
    path = clips[name]
    types = picture_types(path)
    cfg = SamplingConfig(num_frames=16, decoder="pyav", snap="reference_frames")
    video = sample_frames(path, cfg)
    exact = segment_indices(len(types), 16)
    ranges = segment_ranges(exact, 0, len(types) - 1)
    moved = [i for i, (used, target) in enumerate(zip(video.indices, exact)) if used != target]
    assert moved, "B-frame content: some segment's middle is a B-frame"
    for i, used in enumerate(video.indices):
        low, high = ranges[i]
        assert used == exact[i] or (low <= used <= high and types[used] in "IP")
        if used != exact[i]:  # the nearest I/P frame of the segment: none closer to the middle
            closer = [f for f in range(low, high + 1) if abs(f - exact[i]) < abs(used - exact[i])]
            assert all(types[f] == "B" for f in closer)
    frames = every_frame(path, cfg)
    assert np.array_equal(video.frames, to_model_frames(np.stack([frames[i] for i in video.indices]), cfg))


def test_snap_skips_every_b_frame(clips, decoded_count):
    path = clips["b-frames"]
    types = picture_types(path)
    video = sample_frames(path, SamplingConfig(num_frames=8, decoder="pyav", snap="reference_frames"))
    up_to_last = int(video.indices[-1]) + 1
    assert decoded_count["frames"] <= sum(t != "B" for t in types[: up_to_last + 4])


def test_snap_keeps_the_exact_frame_where_a_segment_has_no_i_or_p_frame(tmp_path):
    path = write_video(str(tmp_path / "short.mp4"), 96, 64, 6, 24, bframes=3)
    video = sample_frames(path, SamplingConfig(num_frames=16, decoder="pyav", snap="reference_frames"))
    assert list(video.indices) == list(segment_indices(6, 16))


def test_segment_ranges_partition_the_clip_around_each_sampled_frame():
    for total in (1, 2, 5, 16, 17, 100, 1001):
        for segments in (1, 4, 16, 32):
            for first, last in ((0, total - 1), (total // 4, total - 1 - total // 5)):
                targets = segment_indices(total, segments, first, last)
                ranges = segment_ranges(targets, first, last)
                for (low, high), target in zip(ranges, targets):
                    assert low <= target <= high
                if len(set(targets)) == len(targets):  # distinct frames: a partition, in order
                    assert [f for low, high in ranges for f in range(low, high + 1)] == list(range(first, last + 1))
                else:  # a frame sampled again keeps it exactly: no range reaches into another's
                    assert all(high <= low for (_, high), (low, _) in zip(ranges, ranges[1:]))


def test_snap_needs_the_pyav_decoder():
    with pytest.raises(ValidationError, match="needs decoder: pyav"):
        SamplingConfig(decoder="decord", snap="reference_frames")
    with pytest.raises(ValidationError):
        SamplingConfig(decoder="pyav", snap="keyframes-please")
