"""Planning at the edges: the keep order stripping classes, labels of any kind, messages that
fit the item, and a given plan that contradicts the settings (issue: never silently wrong)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from torch_dedup import DedupSampler, EmptyDedupError, ImageDecodeError, plan_dataset
from torch_dedup.embedded import load_sample
from torch_dedup.planning import check_labels, class_order_bias


class Sorted(torch.utils.data.Dataset):
    """The embedded Fashion-MNIST sample sorted by class, as an ImageFolder lists its files."""

    def __init__(self):
        x, y = load_sample()
        order = np.argsort(y, kind="stable")
        self.data, self.targets = x[order], y[order]

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i], int(self.targets[i])


@pytest.fixture(scope="module")
def sorted_ds():
    return Sorted()


def test_class_sorted_keep_order_is_a_warning_naming_the_fix(sorted_ds, caplog):
    with caplog.at_level(logging.WARNING, logger="torch_dedup.planning"):
        plan = plan_dataset(sorted_ds, 14, cache_dir=False, progress=False)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert "keep order decides which classes lose images" in warned[0]
    assert "per_class=True" in warned[0] and "priority=np.random.default_rng(0)" in warned[0]
    # the classes listed last lose most: Sneaker (7) and Ankle boot (9)
    bias = class_order_bias(plan)
    assert bias["one_sided"] > 0.9 and max(bias["removed_pct"], key=bias["removed_pct"].get) in (7, 9)


@pytest.mark.parametrize("fix", [dict(per_class=True), dict(priority=np.random.default_rng(0).random(10_000))])
def test_no_class_order_warning_once_fixed(sorted_ds, caplog, fix):
    with caplog.at_level(logging.WARNING, logger="torch_dedup.planning"):
        plan_dataset(sorted_ds, 14, cache_dir=False, progress=False, **fix)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_unsorted_data_gives_no_class_order_warning(caplog):
    from torch_dedup import SampleDataset
    with caplog.at_level(logging.WARNING, logger="torch_dedup.planning"):
        plan_dataset(SampleDataset(), 14, cache_dir=False, progress=False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_string_labels_are_compared_as_codes():
    names = np.array(["dog", "cat", "dog", "bird"])
    np.testing.assert_array_equal(check_labels(names, 4, True), [2, 1, 2, 0])
    np.testing.assert_array_equal(check_labels(["a", "b"], 2, False), [0, 1])
    np.testing.assert_array_equal(check_labels(np.array([1.0, 3.0]), 2, True), [1, 3])
    with pytest.raises(ValueError, match="not whole numbers"):
        check_labels(np.array([0.2, 0.8]), 2, True)
    with pytest.raises(ValueError, match="one label per item"):
        check_labels(["a"], 2, True)
    # the plan with string labels equals the plan with their codes
    x, y = load_sample(400)

    class Arr(torch.utils.data.Dataset):
        def __len__(self):
            return 400

        def __getitem__(self, i):
            return x[i], 0

    words = np.array([f"class-{v}" for v in y])
    a = plan_dataset(Arr(), 10, labels=words, per_class=True, cache_dir=False, progress=False)
    b = plan_dataset(Arr(), 10, labels=y, per_class=True, cache_dir=False, progress=False)
    np.testing.assert_array_equal(a.keep, b.keep)


class Dicts(torch.utils.data.Dataset):
    """Items that are dicts (as a Hugging Face dataset with decode=False gives them)."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"bytes": b"not an image", "path": None}, 0


def test_a_dict_item_is_not_told_to_fix_a_file():
    with pytest.raises(ImageDecodeError) as info:
        plan_dataset(Dicts(), 4, cache_dir=False, progress=False)
    msg = str(info.value)
    assert "file" not in msg.split(":")[-1] and "image_fn=" in msg
    # following on_error='skip' when every item fails ends in an error that says why skip cannot help
    with pytest.raises(EmptyDedupError, match="Every item failed to hash, so on_error='skip' cannot help"):
        DedupSampler(Dicts(), threshold=4, on_error="skip", cache_dir=False, progress=False)
