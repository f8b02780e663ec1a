"""The small dataset the framework tests (Lightning, Accelerate) train on, in one place.

Imported both by pytest and by the test files when they run as the launched training
script (their folder is then ``sys.path[0]``).
"""

from __future__ import annotations

import numpy as np
import torch

N_UNIQUE, N_COPIES, BATCH = 240, 24, 8


class Digits(torch.utils.data.Dataset):
    """``N_UNIQUE`` sample digits plus ``N_COPIES`` exact copies of some of them; items are (image, label, index)."""

    def __init__(self):
        from torch_dedup.embedded import load_sample
        images, labels = load_sample(N_UNIQUE)
        copies = np.arange(0, 2 * N_COPIES, 2)
        self.data = np.concatenate([images, images[copies]])
        self.targets = np.concatenate([labels, labels[copies]]).astype(np.int64)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return torch.from_numpy(self.data[i]).float().div(255).flatten(), int(self.targets[i]), i
