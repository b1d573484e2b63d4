"""The multi-view data set: K cameras look at the same item, each from its own side.

Every item of a split (Fashion-MNIST, or any [N, C, H, W] u8 images) becomes K views, one per
end device. View v of an item is, in this order:

1. a crop: the item shifted by (dy, dx), each uniform in -SHIFT..SHIFT pixels (zero padding),
   as a camera frames the scene a little differently;
2. an occlusion: only a half-plane stays visible, the side of a line through the image centre
   (moved along its normal by an offset uniform in [-OFFSET, OFFSET] pixels) that faces the
   direction 2*pi*v/K plus a jitter uniform in [-JITTER, JITTER]; the rest is black. Camera v
   sees the item from its own side, so no view shows all of it and K views together do;
3. impulse noise: each pixel independently becomes 0 (dead) with probability IMPULSE/2 or 255
   (hot) with probability IMPULSE/2, in every channel alike.

The random numbers come from numpy Generators seeded with (seed, split, K, v, block), one per
block of BLOCK items, with fixed-size draws per block: view v of item i depends only on the seed,
the split, K, v and i, never on how many items are made at once, so the first N items of a split
are the same whether made alone or with the rest (the shipped evaluation sample is the first
2,000 test items; --train-limit and --test-limit cut the same views). The same numpy version
gives the same bytes (numpy does not promise its Generator streams across versions; the shipped
sample pins what the shipped bundle was measured on).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .data import load_dataset, write_idx

SHIFT = 2
OFFSET = 2.0
JITTER_DEGREES = 22.5
IMPULSE = 0.05
BLOCK = 1000
MIN_VIEWS, MAX_VIEWS = 2, 6
SPLIT_CODES = {"train": 0, "test": 1}
GENERATOR = "trainer/views_data.py v1"


def view_spec(views: int, seed: int) -> dict[str, Any]:
    """What a bundle records about the views it was trained and measured on."""
    return {"generator": GENERATOR, "views": views, "seed": seed, "shift": SHIFT, "offset": OFFSET,
            "jitterDegrees": JITTER_DEGREES, "impulse": IMPULSE, "block": BLOCK}


def check_views(views: int) -> None:
    if not MIN_VIEWS <= views <= MAX_VIEWS:
        raise ValueError(f"--views {views}: a multi-view model has {MIN_VIEWS} to {MAX_VIEWS} views")


def _block_views(images: np.ndarray, views: int, view: int, split: str, seed: int, block: int) -> np.ndarray:
    """View `view` of one block of up to BLOCK items (images [n, C, H, W], n <= BLOCK)."""
    n, c, h, w = images.shape
    rng = np.random.default_rng([seed, SPLIT_CODES[split], views, view, block])
    # Fixed-size draws, always in this order, so an item's view does not depend on n.
    jitter = rng.uniform(-math.radians(JITTER_DEGREES), math.radians(JITTER_DEGREES), BLOCK)[:n]
    offset = rng.uniform(-OFFSET, OFFSET, BLOCK)[:n]
    dy = rng.integers(-SHIFT, SHIFT + 1, BLOCK)[:n]
    dx = rng.integers(-SHIFT, SHIFT + 1, BLOCK)[:n]
    noise = rng.random((BLOCK, h, w), dtype=np.float32)[:n]

    padded = np.pad(images, ((0, 0), (0, 0), (SHIFT, SHIFT), (SHIFT, SHIFT)))
    out = np.empty_like(images)
    for sy in range(-SHIFT, SHIFT + 1):
        for sx in range(-SHIFT, SHIFT + 1):
            rows = np.nonzero((dy == sy) & (dx == sx))[0]
            if rows.size:
                # Content moves by (sy, sx): output pixel (y, x) shows input pixel (y - sy, x - sx).
                out[rows] = padded[rows, :, SHIFT - sy:SHIFT - sy + h, SHIFT - sx:SHIFT - sx + w]

    theta = 2 * math.pi * view / views + jitter
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy -= (h - 1) / 2
    xx -= (w - 1) / 2
    along = np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy
    visible = along >= offset[:, None, None]
    out = out * visible[:, None].astype(np.uint8)
    out[np.broadcast_to((noise < IMPULSE / 2)[:, None], out.shape)] = 0
    out[np.broadcast_to((noise >= 1 - IMPULSE / 2)[:, None], out.shape)] = 255
    return out


def make_views(images: np.ndarray, views: int, split: str, seed: int = 0, start: int = 0) -> np.ndarray:
    """u8 views [N, K, C, H, W] of u8 images [N, C, H, W], which are items start..start+N-1 of `split`."""
    check_views(views)
    if split not in SPLIT_CODES:
        raise ValueError(f"split {split!r}: choose from {', '.join(SPLIT_CODES)}")
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"views are made from u8 images [N, C, H, W], got {images.dtype} {list(images.shape)}")
    n = len(images)
    out = np.empty((n, views) + images.shape[1:], dtype=np.uint8)
    first, last = start // BLOCK, (start + n + BLOCK - 1) // BLOCK
    for block in range(first, last):
        lo, hi = max(block * BLOCK, start), min((block + 1) * BLOCK, start + n)
        if lo >= hi:
            continue
        # Items of this block before `start` are drawn for (fixed-size draws) and dropped.
        skip = lo - block * BLOCK
        chunk = np.zeros((skip + hi - lo,) + images.shape[1:], dtype=np.uint8)
        chunk[skip:] = images[lo - start:hi - start]
        for v in range(views):
            out[lo - start:hi - start, v] = _block_views(chunk, views, v, split, seed, block)[skip:]
    return out


def sample_paths(out_dir: str, dataset: str, views: int, count: int, split: str = "test") -> tuple[list[str], str]:
    tag = "t10k" if split == "test" and dataset == "fashion-mnist" else split
    stem = os.path.join(out_dir, f"{dataset}-views{views}-{tag}-{count}")
    return [f"{stem}-view{v}-images-idx3-ubyte.gz" for v in range(views)], f"{stem}-labels-idx1-ubyte.gz"


def write_views_sample(dataset: str, split: str, count: int, out_dir: str, data_dir: str | None, views: int,
                       seed: int = 0) -> list[str]:
    """The views of the first `count` items of a split, one gzipped idx file per view ([count, H, W]
    for one channel, [count, C, H, W] otherwise; gzip mtime 0), and their labels."""
    check_views(views)
    data = load_dataset(dataset, data_dir)
    part = data.test if split == "test" else data.train
    if count > len(part.labels):
        raise ValueError(f"--count {count}: the {split} split holds only {len(part.labels)} samples")
    made = make_views(part.images[:count], views, split, seed)
    os.makedirs(out_dir, exist_ok=True)
    image_paths, labels_path = sample_paths(out_dir, dataset, views, count, split)
    if made.shape[2] != 1:
        image_paths = [p.replace("-idx3-", "-idx4-") for p in image_paths]
    for v, path in enumerate(image_paths):
        view = made[:, v]
        write_idx(path, view[:, 0] if view.shape[1] == 1 else view)
    write_idx(labels_path, part.labels[:count].astype(np.uint8))
    return [*image_paths, labels_path]
