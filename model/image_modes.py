"""PIL images of any mode to 8-bit RGB, one rule for the shard builder, the tracker and the OTB reader.

Why not ``Image.convert("RGB")`` alone: for 16-bit images it clips every sample above 255 to white. We keep the
high byte (``value >> 8``), which is what ``cv2.imread`` gives for 16-bit files, so a 16-bit frame looks the same
to the builder, the tracker and the evaluator. Float images (mode ``F``) have no defined 8-bit scale and are refused.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})  # PNG 16-bit gray ("I" in older Pillow)


def to_rgb8(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB (gray expanded by content); ValueError for float samples or for integer samples
    outside 0..65535, which have no 8-bit reading either.

    Mode ``I`` (32-bit integers) is ambiguous: older Pillow opened 16-bit PNGs so, other files hold 8-bit values
    in it. Samples all within 0..255 are read as 8-bit, larger ones (up to 65535) as 16-bit.
    """
    if im.mode == "F":
        raise ValueError("cannot convert mode F (32-bit float samples) to 8-bit RGB")
    if im.mode in SIXTEEN_BIT_MODES:
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 0xFFFF):
            raise ValueError(f"mode {im.mode} samples outside the 16-bit range")
        im = Image.fromarray((a if im.mode == "I" and a.max(initial=0) <= 0xFF else a >> 8).astype(np.uint8))
    return im if im.mode == "RGB" else im.convert("RGB")
