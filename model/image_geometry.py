"""Frame geometry of the reference's pixel path, as sizes and offsets (no torch, no image library).

The reference turns a decoded frame into the vision tower's square in two resizes and a crop:

1. ``resize_crop_longshort``: the short side to ``max(S, min(short, int(min(640, long) / (long / short))))``
   with the long side ``int(new_short * long / short)`` (3840x2160 -> 640x360, 1280x720 -> 640x360,
   1080x1920 -> 360x640; a clip smaller than S on its short side is scaled up to S);
2. the CLIP image processor: the short side to S, the long side ``int(S * long / short)`` (640x360 ->
   597x336);
3. a centre crop of S x S from ``((h - S) // 2, (w - S) // 2)`` (x = 130 for 597 wide).

Both pixel modes of the sampler and the processor's own resize use these numbers, so they cut the same
square out of the frame.
"""

from __future__ import annotations

REFERENCE_LONG_SIDE = 640  # the reference's first resize keeps the long side near this


def short_side_size(width: int, height: int, short: int) -> tuple[int, int]:
    """``(w, h)`` with the short side at ``short`` and the long side ``int(short * long / short_before)``,
    truncated as transformers' ``get_resize_output_image_size`` truncates it."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def reference_prescale_size(width: int, height: int, side: int) -> tuple[int, int]:
    """Step 1 for a single video: the size the reference resizes decoded frames to before the processor."""
    short, long = min(width, height), max(width, height)
    target = max(side, min(short, int(min(REFERENCE_LONG_SIDE, long) / (long / short))))
    return short_side_size(width, height, target)


def reference_scaled_size(width: int, height: int, side: int) -> tuple[int, int]:
    """Steps 1 and 2: the size of the frame the centre crop is cut from (597x336 for 16:9 at S=336)."""
    return short_side_size(*reference_prescale_size(width, height, side), side)


def center_offsets(width: int, height: int, side: int) -> tuple[int, int]:
    """``(top, left)`` of the S x S centre crop, as the CLIP processor computes them."""
    return (height - side) // 2, (width - side) // 2


__all__ = ["REFERENCE_LONG_SIDE", "short_side_size", "reference_prescale_size", "reference_scaled_size",
           "center_offsets"]
