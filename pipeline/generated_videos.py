"""Generate small real video files with PyAV: the demo's embedded input and the tests' fixtures.

Frames are a moving gradient with a bright square whose position encodes time, so sampled frames
differ from one another and from other clips (distinct ``seed``).
"""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np


def synthetic_frames(width: int, height: int, num_frames: int, seed: int = 0, detail: bool = False) -> np.ndarray:
    """``uint8 (N, H, W, 3)``: per-clip colours from ``seed``, a square moving left to right; ``detail`` adds
    pixel-scale texture drifting across the frame (where resize filters differ, as on real footage)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, size=3)
    ys = np.linspace(0, 1, height)[:, None]
    xs = np.linspace(0, 1, width)[None, :]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    side = max(4, min(width, height) // 4)
    texture = rng.integers(-48, 49, size=(height, width, 1), dtype=np.int16) if detail else None
    for i in range(num_frames):
        t = i / max(1, num_frames - 1)
        for c in range(3):
            frames[i, :, :, c] = (base[c] + 55 * np.sin(2 * np.pi * (xs * (c + 1) + ys + t))).clip(0, 255)
        if texture is not None:
            frames[i] = (frames[i] + np.roll(texture, 3 * i, axis=1)).clip(0, 255)
        x0 = int(t * (width - side))
        y0 = (height - side) // 2
        frames[i, y0 : y0 + side, x0 : x0 + side] = 255
    return frames


def write_video(
    path: str,
    width: int = 320,
    height: int = 240,
    num_frames: int = 48,
    fps: int = 24,
    codec: str = "libx264",
    seed: int = 0,
    gop: int | None = None,
    faststart: bool = False,
    detail: bool = False,
    bframes: int = 0,
    open_gop: bool = False,
    vfr: bool = False,
) -> str:
    """Encode a synthetic clip. ``codec`` "libx264" (mp4/mkv), "libvpx-vp9" (webm) or "gif"; ``detail``: see
    :func:`synthetic_frames`. libx264 only: ``bframes`` B-frames between references (b-pyramid where 2 or
    more), ``open_gop``; ``vfr``: irregular frame times (every third interval doubled)."""
    import av

    frames = synthetic_frames(width, height, num_frames, seed, detail)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(path, mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=Fraction(fps) if codec != "gif" else fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if gop and codec != "gif":
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "28"}
            if bframes or open_gop:
                params = [f"bframes={bframes}", f"b-pyramid={'normal' if bframes >= 2 else 'none'}"]
                stream.options["x264-params"] = ":".join(params + (["open-gop=1"] if open_gop else []))
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if vfr:
                frame.pts = i + i // 3
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_broken_files(folder: str) -> dict[str, str]:
    """Files that look like videos but are not: zero bytes, text named .mp4, random bytes, a truncated mp4."""
    os.makedirs(folder, exist_ok=True)
    paths = {
        "empty": os.path.join(folder, "empty.mp4"),
        "text": os.path.join(folder, "notes.mp4"),
        "random": os.path.join(folder, "noise.mkv"),
        "truncated": os.path.join(folder, "truncated.mp4"),
    }
    open(paths["empty"], "wb").close()
    with open(paths["text"], "w", encoding="utf-8") as f:
        f.write("this is a text file, not a video\n" * 20)
    with open(paths["random"], "wb") as f:
        f.write(np.random.default_rng(7).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    whole = write_video(paths["truncated"] + ".full.mp4", num_frames=48, seed=9)
    with open(whole, "rb") as f:
        data = f.read()
    with open(paths["truncated"], "wb") as f:
        f.write(data[: len(data) // 3])
    os.remove(whole)
    return paths


def write_demo_videos(folder: str) -> list[str]:
    """The embedded default input: a few good clips of different shapes and formats plus one broken file."""
    os.makedirs(folder, exist_ok=True)
    paths = [
        write_video(os.path.join(folder, "street_wide.mp4"), 640, 360, 72, 24, seed=1),
        write_video(os.path.join(folder, "portrait.mp4"), 240, 426, 40, 20, seed=2),
        write_video(os.path.join(folder, "square.mkv"), 320, 320, 30, 15, seed=3),
        write_video(os.path.join(folder, "loop.gif"), 160, 120, 12, 10, codec="gif", seed=4),
    ]
    broken = os.path.join(folder, "broken.mp4")
    with open(broken, "w", encoding="utf-8") as f:
        f.write("not a video\n")
    return paths + [broken]
