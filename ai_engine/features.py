"""Feature extractors for FID/KID, pluggable.

No weights can be downloaded here, so the default extractor is one the project trains: the
encoder of a reconstruction checkpoint (default: the shipped ``ae-cxr`` autoencoder), whose
bottleneck features summarise an image. A user with a local Inception network can pass any
callable with the same signature. FIDs from different extractors are not comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import torch

from ai_engine.transforms import model_input
from ai_engine.types import FloatArray

#: images (greyscale, [0, 1], any size) -> features (N, D)
FeatureExtractor = Callable[[Sequence[FloatArray]], npt.NDArray[np.float64]]


def encoder_features(checkpoint: str = "ae-cxr", batch_size: int = 32) -> FeatureExtractor:
    """A `FeatureExtractor` from the encoder of a checkpoint whose network has ``encode``.

    Raises:
        TypeError: the checkpoint's network has no ``encode`` method.
    """
    from ai_engine.pipeline import get_model

    model = get_model(checkpoint)
    encode = getattr(model.network, "encode", None)
    if encode is None:
        raise TypeError(f"checkpoint {checkpoint!r} has no encoder to take features from")
    size = model.card.image_size

    @torch.no_grad()
    def extract(images: Sequence[FloatArray]) -> npt.NDArray[np.float64]:
        feats = []
        for start in range(0, len(images), batch_size):
            x = torch.stack([model_input(i, size) for i in images[start : start + batch_size]])
            out = encode(x.to(model.device))
            if isinstance(out, tuple):  # VAE: (mu, logvar)
                out = out[0]
            feats.append(out.float().cpu().numpy())
        return np.concatenate(feats).astype(np.float64)

    return extract
