"""Preprocessing shared by training and inference (MONAI array transforms).

One function, `model_input`, turns a greyscale image in [0, 1] (from a PNG or from a DICOM
after `ai_engine.dicom_io.reader`) into what a model sees. Training and inference both call
it, so a model is never fed differently from how it was trained. The model card states the
same steps in words (`describe`).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import Compose, EnsureChannelFirst, EnsureType, Resize, ScaleIntensityRange

from ai_engine.types import FloatArray


def build(image_size: tuple[int, int]) -> Compose:
    """The preprocessing chain for a model with input size ``image_size`` (H, W).

    The source image is *squashed* to the model size (aspect ratio not kept), as the
    pediatric CXR set was prepared; ``area`` interpolation averages the pixels each output
    pixel covers, so a large radiograph and a small PNG of it give nearly the same input.

    Args:
        image_size: (H, W) of the model input.

    Returns:
        A MONAI Compose taking a (H0, W0) float array in [0, 1], returning a (1, H, W) tensor.
    """
    return Compose(
        [
            EnsureChannelFirst(channel_dim="no_channel"),
            ScaleIntensityRange(a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
            Resize(spatial_size=image_size, mode="area"),
            EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )


def describe(image_size: tuple[int, int], anatomy: str = "") -> str:
    """The preprocessing of `build` in words, for the model card (``anatomy``: the card's)."""
    if anatomy == "brain":
        return (
            "each series as one volume: HD-BET brain extraction (fold 0, no mirroring; "
            "ai_engine/anatomy/brain.py), intensities as a robust z-score of the volume's "
            "brain voxels mapped to 0.25 + z/8 and clipped to [0, 1], 0 outside the brain; "
            f"each slice squashed to {image_size[0]}x{image_size[1]} with area interpolation"
        )
    text = (
        "greyscale in [0, 1] (DICOM: modality LUT/rescale, then VOI LUT or window, "
        "MONOCHROME1 inverted, 8-bit data divided by 255; PNG: value/255); clipped to [0, 1]; "
        f"squashed to {image_size[0]}x{image_size[1]} (aspect ratio not kept) with area "
        "interpolation; no intensity normalisation beyond that"
    )
    if anatomy == "lungs":
        text += (
            "; lung fields found by the lung-field U-Net (ai_engine/anatomy/lungs.py): the map "
            "is zeroed outside them (widened by 2 model pixels), the score comes from inside "
            "them, an image without a plausible lung field is not analysed"
        )
    return text


def model_input(image: FloatArray, image_size: tuple[int, int]) -> torch.Tensor:
    """Apply `build` to one image.

    Args:
        image: (H0, W0) float array in [0, 1].
        image_size: (H, W) of the model input.

    Returns:
        (1, H, W) float32 tensor.
    """
    out = build(image_size)(np.asarray(image, dtype=np.float32))
    return torch.as_tensor(out, dtype=torch.float32)
