"""DedupSampler inside PyTorch Lightning's Trainer: real 2-process CPU (gloo) runs, ddp and ddp_spawn.

Lightning wraps every loader sampler that is not a ``DistributedSampler`` in its own
``DistributedSamplerWrapper``; a sampler that already splits by rank would be split twice
(each rank saw half of its share). DedupSampler is a ``DistributedSampler`` subclass, so the
Trainer keeps it and calls ``set_epoch``. These tests log the indices every rank really trained
and validated on, and compare them with the plan.

This file is also the training script the tests launch (``python THIS_FILE OUT MODE STRATEGY``):
Lightning's ``ddp`` strategy re-runs the launching command once per extra rank, which must not
be pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from integration_data import BATCH, N_COPIES, N_UNIQUE, Digits  # noqa: E402 - shared with the launched script


make_dataset = Digits


# ----------------------------------------------------------------- the training script
# Defined only when this file runs as the script (and in ddp_spawn's children, which import it as
# __mp_main__): Lightning pickles the module and datamodule by reference, so they live at module level.

if __name__ in ("__main__", "__mp_main__"):
    import lightning as L
    from torch.utils.data import DataLoader

    from torch_dedup import DedupSampler

    def _sampler(ds, shuffle):
        return DedupSampler(ds, threshold=6, cache_dir=False, progress=False, shuffle=shuffle, seed=3)

    class Data(L.LightningDataModule):
        def __init__(self, mode: str, stateful: bool):
            super().__init__()
            self.mode, self.stateful = mode, stateful
            self.ds = make_dataset()
            if mode == "init":
                self.train_s, self.val_s = _sampler(self.ds, True), _sampler(self.ds, False)

        def setup(self, stage):
            if self.mode == "setup":
                self.train_s, self.val_s = _sampler(self.ds, True), _sampler(self.ds, False)

        def _loader(self, s):
            if self.stateful:
                from torchdata.stateful_dataloader import StatefulDataLoader
                return StatefulDataLoader(self.ds, batch_size=BATCH, sampler=s)
            return DataLoader(self.ds, batch_size=BATCH, sampler=s)

        def train_dataloader(self):
            return self._loader(_sampler(self.ds, True) if self.mode == "hooks" else self.train_s)

        def val_dataloader(self):
            return self._loader(_sampler(self.ds, False) if self.mode == "hooks" else self.val_s)

    class Model(L.LightningModule):
        def __init__(self, out: str, ckpt: str | None, save_at: int | None):
            super().__init__()
            self.out, self.ckpt, self.save_at = out, ckpt, save_at
            self.net = torch.nn.Linear(28 * 28, 10)
            self.seen = {"train": {}, "val": {}}

        def _log(self, stage, idx):
            self.seen[stage].setdefault(str(self.current_epoch), []).extend(idx.tolist())

        def training_step(self, batch, _):
            x, y, idx = batch
            self._log("train", idx)
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, _):
            x, y, idx = batch
            if not self.trainer.sanity_checking:
                self._log("val", idx)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def on_train_batch_end(self, *args):
            # a mid-epoch checkpoint, saved where a step-interval ModelCheckpoint would save it
            if self.save_at is not None and self.global_step == self.save_at:
                self.trainer.save_checkpoint(self.ckpt)

        def on_fit_end(self):
            rank = self.trainer.global_rank
            loader = self.trainer.train_dataloader
            report = {**self.seen, "sampler": type(loader.sampler).__name__, "world": self.trainer.world_size}
            (Path(self.out) / f"report_{rank}.json").write_text(json.dumps(report))


def main(out: str, mode: str, strategy: str, max_steps: int, ckpt: str | None, stateful: bool) -> None:
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=2, max_steps=max_steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    resume = ckpt if ckpt and max_steps < 0 else None
    save_at = max_steps if ckpt and max_steps > 0 else None
    trainer.fit(Model(out, ckpt, save_at), datamodule=Data(mode, stateful), ckpt_path=resume)


# ----------------------------------------------------------------- the tests

def _launch(out: Path, mode: str, strategy: str, max_steps: int = -1, ckpt: Path | None = None,
            stateful: bool = False) -> list[dict]:
    for old in out.glob("report_*.json"):
        old.unlink()
    cmd = [sys.executable, os.path.abspath(__file__), str(out), mode, strategy, str(max_steps),
           str(ckpt or ""), "1" if stateful else "0"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env, cwd=out)
    assert proc.returncode == 0, f"Lightning run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((out / f"report_{r}.json").read_text()) for r in range(2)]


def _plan():
    from torch_dedup import plan_dataset
    return plan_dataset(make_dataset(), threshold=6, cache_dir=False, progress=False)


def _check_epoch(parts: list[list[int]], kept: np.ndarray, what: str) -> None:
    """Across ranks: every kept index at least once, nothing else, repeats only DistributedSampler's padding."""
    counts = Counter(i for part in parts for i in part)
    assert set(counts) == set(kept.tolist()), f"{what}: union != kept ({len(set(counts))} of {len(kept)})"
    pad = len(parts) * -(-len(kept) // len(parts)) - len(kept)
    assert sum(counts.values()) - len(kept) == pad, f"{what}: {sum(counts.values())} indices for {len(kept)} kept"
    assert all(len(p) == len(parts[0]) for p in parts), f"{what}: ranks got {[len(p) for p in parts]}"


@pytest.mark.slow
@pytest.mark.parametrize("strategy, mode", [("ddp", "init"), ("ddp_spawn", "setup"), ("ddp_spawn", "init"),
                                            ("ddp", "hooks")])
def test_every_kept_index_once_per_epoch(tmp_path, strategy, mode):
    pytest.importorskip("lightning")
    kept = _plan().kept_indices
    assert len(kept) < N_UNIQUE + N_COPIES  # the copies are really removed
    reports = _launch(tmp_path, mode, strategy)
    assert all(r["sampler"] == "DedupSampler" and r["world"] == 2 for r in reports)  # kept, not wrapped
    for stage in ("train", "val"):
        for epoch in ("0", "1"):
            _check_epoch([r[stage][epoch] for r in reports], kept, f"{strategy}/{mode} {stage} epoch {epoch}")
    for r in reports:
        assert r["train"]["0"] != r["train"]["1"], "the training order must change per epoch"
        assert r["val"]["0"] == r["val"]["1"], "shuffle=False validation is the same every epoch"


@pytest.mark.slow
def test_mid_epoch_resume_neither_repeats_nor_skips(tmp_path):
    pytest.importorskip("lightning")
    pytest.importorskip("torchdata")
    from torch_dedup import DedupSampler

    kept = _plan().kept_indices
    per_rank_batches = -(-(-(-len(kept) // 2)) // BATCH)
    stop = per_rank_batches + 3  # 3 steps into epoch 1
    ckpt = tmp_path / "mid.ckpt"
    first = _launch(tmp_path, "setup", "ddp", max_steps=stop, ckpt=ckpt, stateful=True)
    assert ckpt.exists()
    second = _launch(tmp_path, "setup", "ddp", ckpt=ckpt, stateful=True)
    ds = make_dataset()
    for rank in range(2):
        ref = DedupSampler(ds, threshold=6, cache_dir=False, progress=False, seed=3, num_replicas=2, rank=rank)
        ref.set_epoch(1)
        trained = first[rank]["train"]["1"] + second[rank]["train"]["1"]
        assert len(first[rank]["train"]["1"]) == 3 * BATCH
        assert trained == ref.epoch_indices().tolist(), f"rank {rank}: resumed epoch 1 repeats or skips"
        assert "0" not in second[rank]["train"]
    _check_epoch([r["val"]["1"] for r in second], kept, "validation after the resume")
    _check_epoch([first[r]["train"]["1"] + second[r]["train"]["1"] for r in range(2)], kept, "resumed epoch 1")


def test_a_wrapper_that_splits_again_is_refused_and_shard_false_works():
    """Lightning's DistributedSamplerWrapper (used for predict, or for a sampler that is no
    DistributedSampler) and accelerate's BatchSamplerShard split their sampler's output by rank."""
    fabric = pytest.importorskip("lightning.fabric.utilities.distributed")
    from torch.utils.data import BatchSampler

    from torch_dedup import DedupSampler
    from torch_dedup.errors import DedupError

    ds, plan = Digits(), _plan()
    split = DedupSampler(ds, plan=plan, num_replicas=2, rank=0)
    with pytest.raises(DedupError, match="shard=False"):
        list(fabric.DistributedSamplerWrapper(split, num_replicas=2, rank=0, shuffle=False))
    whole = DedupSampler(ds, plan=plan, shard=False)
    parts = [list(fabric.DistributedSamplerWrapper(whole, num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    _check_epoch(parts, plan.kept_indices, "shard=False under Lightning's wrapper")
    accelerate_data = pytest.importorskip("accelerate.data_loader")
    shard = accelerate_data.BatchSamplerShard(BatchSampler(split, 8, False), num_processes=2, process_index=0)
    with pytest.raises(DedupError, match="shard=False"):
        list(shard)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] or None, sys.argv[6] == "1")
