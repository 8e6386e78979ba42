"""Regenerate the demo line's texture crops from scikit-image's CC0 sample images (run once, by hand).

scikit-image is only a dev dependency, so the crops are committed as PNG files and the demo line never needs it:

    .venv/bin/python edge_inspector/capture/textures/make_textures.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import skimage.data

SIZE = 384
NAMES = ("brick", "grass", "gravel")


def main() -> None:
    out_dir = Path(__file__).resolve().parent
    for name in NAMES:
        image = getattr(skimage.data, name)()  # 512x512 uint8 gray, CC0
        crop = image[:SIZE, :SIZE]
        cv2.imwrite(str(out_dir / f"{name}.png"), crop, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(f"wrote {out_dir / name}.png {crop.shape}")


if __name__ == "__main__":
    main()
