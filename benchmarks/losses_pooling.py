"""Loss choice on a rare, thin class and per-axis pooling on anisotropic voxels, measured side by side.

Both tasks come from the MNI152 2009a template shipped in nilearn (no download):

- ``losses``: 2D axial slices (2 mm in-plane), class 1 = CSF deep inside the brain (ventricles and
  deep sulci: non-tissue voxels after eroding the filled brain by 6 mm), about 1% of the pixels.
  dice_ce, dice_focal and dice_tversky train the same seeded U-Net for the same steps on the same batches
  (4 slices);
  the score is the Dice of class 1 over the held-out slices (every third block of 4 slices).
- ``pooling``: the volume at 2 x 2 x 4 mm (in-plane 2x and z 4x block means), grey/white matter labels;
  a 3D U-Net of depth 3 pooling 2x on every axis against ``pool_sizes [[2,2,1],[2,2,2],[2,2,2]]``, trained
  on patches of the left hemisphere and scored (mean GM/WM Dice) on the right one.

``uv run python benchmarks/losses_pooling.py losses --steps 200 --seeds 0 1``
``uv run python benchmarks/losses_pooling.py pooling --steps 100 --seeds 0 1``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage

from segpipe.data.demos.mni2d import _load_template, mni_labels
from segpipe.losses import SegmentationLoss
from segpipe.models import UNet


def block_mean(volume: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Mean over non-overlapping blocks of ``factors`` voxels (trailing partial blocks dropped)."""
    shape = [s // f for s, f in zip(volume.shape, factors, strict=True)]
    cut = volume[: shape[0] * factors[0], : shape[1] * factors[1], : shape[2] * factors[2]]
    return cut.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2]).mean((1, 3, 5))


def template(factors: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1 (z-scored), GM and WM probability maps of the template, block-averaged by ``factors``."""
    t1, gm, wm = (block_mean(_load_template(k).astype(np.float32), factors) for k in ("t1", "gm", "wm"))
    return (t1 - t1.mean()) / t1.std(), gm / 255.0, wm / 255.0


def deep_csf_slices() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, val images, val labels) of axial 2 mm slices: (N, 1, X, Y) and (N, X, Y)."""
    t1, gm, wm = template((2, 2, 1))
    tissue = mni_labels(gm, wm) > 0
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(tissue, iterations=3))
    deep = ndimage.binary_erosion(brain, iterations=3) & ~tissue  # 3 voxels = 6 mm in-plane
    keep = [z for z in range(deep.shape[2]) if deep[..., z].sum() >= 20]
    val = [z for i, z in enumerate(keep) if (i // 4) % 3 == 2]
    train = [z for z in keep if z not in val]

    def take(zs: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return t1[..., zs].transpose(2, 0, 1)[:, None].copy(), deep[..., zs].transpose(2, 0, 1).astype(np.int64)

    return *take(train), *take(val)


def dice(pred: torch.Tensor, target: torch.Tensor, cls: int) -> float:
    p, t = pred == cls, target == cls
    return float(2 * (p & t).sum() / (p.sum() + t.sum()).clamp(min=1))


def train(
    net: torch.nn.Module,
    loss: SegmentationLoss,
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
) -> float:
    """Adam (lr 1e-3) for ``steps`` steps on ``batches(step)``; returns the seconds taken."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    start = time.perf_counter()
    for step in range(steps):
        image, target = batches(step)
        optimizer.zero_grad()
        loss(net(image), target).backward()
        optimizer.step()
    return time.perf_counter() - start


Batches = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def slice_batches(images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor) -> Batches:
    """Step i's batch: the slices ``order[i]``."""
    return lambda step: (images[order[step]], labels[order[step]])


def patch_batches(
    image: torch.Tensor, labels: torch.Tensor, corners: list[list[int]], patch: tuple[int, ...]
) -> Batches:
    """Step i's batch: the two patches of ``image`` (1, 1, *S) and ``labels`` (*S) at corners 2i and 2i + 1."""

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cuts = [
            tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True)) for corner in corners[2 * step :][:2]
        ]
        return torch.cat([image[(..., *c)] for c in cuts]), torch.stack([labels[c] for c in cuts])

    return batch


def run_losses(steps: int, seeds: list[int]) -> None:
    x_train, y_train, x_val, y_val = (torch.from_numpy(a) for a in deep_csf_slices())
    fraction = float(torch.cat([y_train, y_val]).float().mean())
    print(f"deep CSF: {len(x_train)} train / {len(x_val)} val slices {tuple(x_train.shape[2:])}, {fraction:.2%} px")
    print("| loss | seed | val Dice (deep CSF) | train s |")
    for seed in seeds:
        order = torch.randint(0, len(x_train), (steps, 4), generator=torch.Generator().manual_seed(seed))
        for name in ("dice_ce", "dice_focal", "dice_tversky"):
            torch.manual_seed(seed)
            net = UNet(2, 1, 2, depth=3, base_channels=8)
            seconds = train(net, SegmentationLoss(name, 2), slice_batches(x_train, y_train, order), steps)
            net.eval()
            with torch.no_grad():
                pred = net(x_val).argmax(1)
            print(f"| {name} | {seed} | {dice(pred, y_val, 1):.3f} | {seconds:.0f} |", flush=True)


def run_pooling(steps: int, seeds: list[int]) -> None:
    t1, gm, wm = template((2, 2, 4))
    labels = torch.from_numpy(mni_labels(gm, wm).astype(np.int64))
    image = torch.from_numpy(t1)[None, None]
    half = t1.shape[0] // 2
    print(f"volume {tuple(t1.shape)} at 2 x 2 x 4 mm; train x < {half}, test x >= {half}")
    patch = (48, 48, 12)
    print("| pooling | seed | test Dice (GM, WM mean) | train s | bottleneck |")
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        limits = (half - patch[0], t1.shape[1] - patch[1], t1.shape[2] - patch[2])
        corners = [[int(torch.randint(0, m + 1, (1,), generator=gen)) for m in limits] for _ in range(2 * steps)]

        batches = patch_batches(image, labels, corners, patch)

        for pools in (None, [[2, 2, 1], [2, 2, 2], [2, 2, 2]]):
            torch.manual_seed(seed)
            net = UNet(3, 1, 3, depth=3, base_channels=8, norm="instance", upsample="interp", pool_sizes=pools)
            seconds = train(net, SegmentationLoss("dice_ce", 3), batches, steps)
            net.eval()
            with torch.no_grad():
                pred = net(image[:, :, half:]).argmax(1)[0]
            score = (dice(pred, labels[half:], 1) + dice(pred, labels[half:], 2)) / 2
            stride = net.stride if isinstance(net.stride, tuple) else (net.stride,) * 3
            bottleneck = "x".join(str(-(-p // s)) for p, s in zip(patch, stride, strict=True))
            print(f"| {pools or 'isotropic 2x'} | {seed} | {score:.3f} | {seconds:.0f} | {bottleneck} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["losses", "pooling"])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    # one thread: on a shared 2-core machine, two threads waited on each other (0.8 s against 6 s a step)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    (run_losses if args.task == "losses" else run_pooling)(args.steps, args.seeds)


if __name__ == "__main__":
    main()
