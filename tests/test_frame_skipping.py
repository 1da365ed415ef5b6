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


def reference_flags(path: str) -> list[bool]:
    """Per frame (display order), whether other frames may refer to it, read from the bitstream itself (not
    from the decoder): H.264's ``nal_ref_idc`` of its slices, HEVC's NAL type (the even types below 16 are
    sub-layer non-reference pictures). mp4 packets: NAL units behind 4-byte lengths."""
    flags = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        hevc = stream.codec_context.name == "hevc"
        for packet in container.demux(stream):
            data, at, reference = bytes(packet), 0, False
            while at + 4 < len(data):
                size = int.from_bytes(data[at : at + 4], "big")
                header = data[at + 4]
                if hevc:
                    kind = (header >> 1) & 0x3F
                    reference |= kind < 32 and not (kind < 16 and kind % 2 == 0)
                elif header & 0x1F in (1, 5):
                    reference |= (header >> 5) & 3 != 0
                at += 4 + size
            if packet.pts is not None:
                flags[packet.pts] = reference
    return [flags[pts] for pts in sorted(flags)]


def every_frame(path: str, cfg: SamplingConfig) -> list[np.ndarray]:
    """The decode-all floor: every frame decoded in order, each converted at the sampler's size."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        size = decode_size(stream.codec_context.width, stream.codec_context.height, cfg)
        return [decode_pyav._convert(frame, size) for frame in container.decode(stream)]


def assert_frames_equal_decoding_every_frame(path: str, video, cfg: SamplingConfig) -> None:
    """The sampled pixels are those of the frames ``video.indices`` names, decoding every frame in order."""
    frames = every_frame(path, cfg)
    assert np.array_equal(video.frames, to_model_frames(np.stack([frames[i] for i in video.indices]), cfg))


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
    assert_frames_equal_decoding_every_frame(clips[name], video, cfg)


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
    assert decode_pyav.skip_mode("vp9") == "DEFAULT"
    cfg = SamplingConfig(num_frames=4, decoder="pyav", snap="reference_frames")
    video = sample_frames(path, cfg)
    assert list(video.indices) == list(segment_indices(40, 4))  # no snapping without picture-type skipping
    assert_frames_equal_decoding_every_frame(path, video, cfg)


def assert_snapped_to_the_nearest_reference_frame(path: str, video, cfg: SamplingConfig) -> int:
    """Each used frame is its exact frame, or a reference frame of its own range with no reference frame
    nearer the exact one; pixels equal that frame decoded normally. Returns how many moved."""
    references = reference_flags(path)
    exact = segment_indices(len(references), cfg.num_frames)
    ranges = segment_ranges(exact, 0, len(references) - 1)
    for used, target, (low, high) in zip(video.indices, exact, ranges):
        if used != target:
            assert low <= used <= high and references[used]
            assert not any(references[f] for f in range(low, high + 1) if abs(f - target) < abs(used - target))
    assert_frames_equal_decoding_every_frame(path, video, cfg)
    return int(np.sum(video.indices != exact))


@pytest.mark.parametrize("name", ["b-frames", "b-pyramid open-gop", "vfr"])
def test_snap_moves_a_frame_only_to_the_nearest_reference_frame_of_its_own_range(clips, name):
    cfg = SamplingConfig(num_frames=16, decoder="pyav", snap="reference_frames")
    moved = assert_snapped_to_the_nearest_reference_frame(clips[name], sample_frames(clips[name], cfg), cfg)
    assert moved, "B-frame content: some range's middle is a non-reference B-frame"


def test_snap_decodes_no_non_reference_frame(clips, decoded_count):
    path = clips["b-frames"]
    references = reference_flags(path)
    video = sample_frames(path, SamplingConfig(num_frames=8, decoder="pyav", snap="reference_frames"))
    up_to_last = int(video.indices[-1]) + 1
    assert decoded_count["frames"] <= sum(references[: up_to_last + 4])


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


# Found by a hostile tester: x264's default b-pyramid, MPEG-TS seeking, repeated timestamps, HEVC.

def _encode(path, num_frames, codec="libx264", options=None, fps=24):
    """A 96x64 clip with pixel-scale detail, encoded with the given libx264/libx265 options."""
    from fractions import Fraction

    from pipeline.generated_videos import synthetic_frames

    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = options or {}
        for array in synthetic_frames(96, 64, num_frames, 1, True):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_snap_pixels_equal_the_frame_decoded_normally_with_x264_default_b_pyramid(tmp_path):
    # x264's default structure (medium: bframes=3, b-pyramid=normal, ref=3): P-frames may reference the B-ref
    # pictures that skip_frame=BIDIR drops; the used frame must still equal that frame decoded normally.
    path = _encode(str(tmp_path / "v.mp4"), 60, options={"preset": "medium", "x264-params": "b-adapt=0"})
    cfg = SamplingConfig(num_frames=2, decoder="pyav", snap="reference_frames")
    assert_snapped_to_the_nearest_reference_frame(path, sample_frames(path, cfg), cfg)


@pytest.mark.parametrize("num_frames", [1, 2])
def test_exact_frames_in_mpeg_ts_equal_decoding_every_frame(tmp_path, num_frames):
    # MPEG-TS seeks by DTS: seeking to a keyframe's PTS lands after the keyframe. The promise holds for any
    # container with timestamps: same indices as segment_indices, pixels of decode-all.
    params = "bframes=2:keyint=12:min-keyint=12:b-adapt=0:scenecut=0"
    path = _encode(str(tmp_path / "v.ts"), 60, options={"preset": "ultrafast", "x264-params": params})
    cfg = SamplingConfig(num_frames=num_frames, decoder="pyav")
    video = sample_frames(path, cfg)  # today: decode_failed, or another frame's pixels
    assert list(video.indices) == list(segment_indices(60, num_frames))
    assert_frames_equal_decoding_every_frame(path, video, cfg)


def test_exact_frames_with_duplicate_timestamps_equal_decoding_every_frame(tmp_path):
    # Matroska's 1 ms clock at 2000 fps gives pairs of frames the same PTS.
    path = _encode(str(tmp_path / "v.mkv"), 40, fps=2000, options={"preset": "ultrafast", "x264-params": "keyint=10"})
    cfg = SamplingConfig(num_frames=8, decoder="pyav")
    video = sample_frames(path, cfg)
    assert list(video.indices) == list(segment_indices(40, 8))
    assert_frames_equal_decoding_every_frame(path, video, cfg)


@pytest.mark.skipif("libx265" not in av.codecs_available, reason="PyAV's FFmpeg has no libx265")
def test_snap_on_hevc_moves_to_the_nearest_reference_frame(tmp_path):
    # libx265 defaults (b-pyramid): under skip_frame=BIDIR only the first P after an I came out, so the one
    # range [0, 59] around frame 29 snapped to frame 4.
    path = _encode(str(tmp_path / "v.mp4"), 60, codec="libx265",
                   options={"preset": "ultrafast", "x265-params": "log-level=error"})
    cfg = SamplingConfig(num_frames=1, decoder="pyav", snap="reference_frames")
    video = sample_frames(path, cfg)
    assert_snapped_to_the_nearest_reference_frame(path, video, cfg)
    assert abs(int(video.indices[0]) - 29) <= 2
