"""How far the fast preprocessing and the default precision move embeddings.

    python benchmarks/preprocess_accuracy.py --model CHECKPOINT_DIR --images JPEG_DIR

Compares, image by image, against the exact pipeline (Pillow decode and resize as the
checkpoint's processor does, fp32 model): pixel differences of the fast path, and the
cosine between embeddings for (a) fast preprocessing in fp32 and (b) exact preprocessing
in the default precision. Random-weight checkpoints make this a numerical check only.
"""

from __future__ import annotations

import numpy as np
from _common import options, workload

from zstagger.engine.model import ClipEncoder
from zstagger.images import load_image


def main() -> None:
    parser = options(__doc__, images=True, count=96)
    parser.add_argument("--limit", type=int, default=96)
    args = parser.parse_args()
    files = workload(args)[: args.limit]
    fp32 = ClipEncoder.load(args.model, precision="fp32")
    default = ClipEncoder.load(args.model)
    side = 2 * fp32.min_decode_size
    exact = np.stack([fp32.preprocess(load_image(f), exact=True) for f in files])
    fast = np.stack([fp32.preprocess(load_image(f, min_size=side), exact=False) for f in files])
    diff = np.abs(exact.astype(int) - fast.astype(int))
    reference = fp32.encode_images(exact)
    cos_fast = (fp32.encode_images(fast) * reference).sum(-1).numpy()
    cos_precision = (default.encode_images(exact) * reference).sum(-1).numpy()
    print(f"{len(files)} images, decode keeps >= {side}px")
    print(f"fast preprocessing, pixels: mean |diff| {diff.mean():.2f}/255, p99 {np.percentile(diff, 99):.0f}, max {diff.max()}")
    print(f"fast preprocessing (fp32), embedding cosine to exact: min {cos_fast.min():.5f} mean {cos_fast.mean():.5f}")
    print(f"default precision {default.dtype} (exact pixels), cosine to fp32: min {cos_precision.min():.5f} mean {cos_precision.mean():.5f}")


if __name__ == "__main__":
    main()
