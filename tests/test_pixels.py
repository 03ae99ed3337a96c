"""uint8 images to model tensors, against torchvision's own conversion."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import functional as TF

from synrep.pixels import signed_range, unit_range


def test_both_ranges_equal_torchvisions_to_tensor_and_normalize_also_for_a_flipped_view():
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    flipped = images[:, :, ::-1]  # negative strides: torch.from_numpy alone refuses them
    for batch in (images, flipped, torch.from_numpy(images)):
        reference = torch.stack([TF.to_tensor(np.array(img)) for img in batch])
        assert unit_range(batch).shape == (3, 3, 5, 7)
        torch.testing.assert_close(unit_range(batch), reference, rtol=0, atol=1e-7)
        torch.testing.assert_close(signed_range(batch), TF.normalize(reference, [0.5] * 3, [0.5] * 3),
                                   rtol=0, atol=1e-6)
