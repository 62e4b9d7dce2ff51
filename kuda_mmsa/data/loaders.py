"""Data loaders whose order and content do not depend on the number of workers, nor (for
data-parallel training) on how the batches are split over ranks.

Each split gets its own ``torch.Generator`` seeded from (seed, split): the shuffle order and
the workers' base seed are drawn from it, never from the global random stream, so the
model's random numbers (initialisation, dropout) are the same whether data loading uses 0
or 8 worker processes, and the data order does not depend on how many random numbers the
model drew. Workers seed Python's and numpy's generators from their torch seed. Only
``train`` is shuffled (metrics do not depend on order; a fixed evaluation order helps
analysis).

Data-parallel training (``shard=Shard(rank, world_size)``): every rank draws the same
permutation (the same generator, the same draws as one process), cuts it into the same
*global* batches as one process, and takes its contiguous share of each
(``ShardedBatchSampler``). The union of the ranks' batches at a step is exactly the batch one
process sees; each sample of a split is on exactly one rank (no padding), so evaluation
gathers every prediction once, in the split's order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import KudaInputError

SPLIT_OFFSETS = {"train": 0, "valid": 1, "test": 2}


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)


def split_generator(seed: int, split: str, stream: int = 0) -> torch.Generator:
    """The generator of one split; ``stream`` separates independent users (e.g. stage 1's
    modalities) of the same seed."""
    offset = SPLIT_OFFSETS.get(split, 3 + sum(map(ord, split)))
    return torch.Generator().manual_seed((int(seed) * 1009 + offset * 101 + stream) % 2 ** 63)


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel run."""
    rank: int = 0
    world_size: int = 1


def global_batch_size(batch_size: int, world_size: int, per_rank: bool = False) -> int:
    """The batch of one optimisation step over all ranks: ``batch_size`` (split over the
    ranks), or ``batch_size`` per rank with ``per_rank_batch``. KudaInputError when the
    ranks cannot share it equally."""
    batch_size, world_size = int(batch_size), int(world_size)
    if per_rank or world_size <= 1:
        return batch_size * max(world_size, 1)
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        raise KudaInputError(
            f"The global batch (batch_size {batch_size}) cannot be split equally over {world_size} "
            f"processes (torchrun --nproc_per_node x nodes = world size {world_size}). Choose a "
            f"batch_size divisible by {world_size} (e.g. {lower or world_size} or "
            f"{lower + world_size}), or set per_rank_batch: true (--per-rank-batch) so that each "
            f"process takes batch_size samples (global batch {batch_size * world_size}).")
    return batch_size


class ShardedBatchSampler(Sampler[List[int]]):
    """The batches of one rank: global batches of ``batch_size`` consecutive positions of the
    split's order (with ``shuffle``, a permutation drawn from ``generator`` exactly as
    ``DataLoader(shuffle=True, generator=...)`` draws it), each cut into ``world_size``
    contiguous, near-equal chunks, of which this rank takes chunk ``rank``. A last global
    batch smaller than ``world_size`` is merged into the one before (``merge_tail``), so
    that every rank has a sample at every training step."""

    def __init__(self, n: int, batch_size: int, shard: Shard, shuffle: bool = False,
                 generator: Optional[torch.Generator] = None, merge_tail: bool = True):
        self.n, self.batch_size, self.shard = int(n), int(batch_size), shard
        self.shuffle, self.generator = bool(shuffle), generator
        if self.shuffle and generator is None:
            raise ValueError("a shuffling ShardedBatchSampler needs its split's generator")
        bounds = [(s, min(s + self.batch_size, self.n)) for s in range(0, self.n, self.batch_size)]
        if merge_tail and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < shard.world_size:
            bounds[-2:] = [(bounds[-2][0], bounds[-1][1])]
        self.bounds: List[Tuple[int, int]] = bounds

    def __len__(self) -> int:
        return len(self.bounds)

    def global_size(self, step: int) -> int:
        """Samples of the global batch at ``step`` (all ranks together)."""
        s, e = self.bounds[step]
        return e - s

    def _chunk(self, start: int, end: int) -> Tuple[int, int]:
        size, w, r = end - start, self.shard.world_size, self.shard.rank
        base, extra = divmod(size, w)
        lo = start + r * base + min(r, extra)
        return lo, lo + base + (1 if r < extra else 0)

    def local_positions(self) -> List[int]:
        """Positions in the split's order that this rank sees, in order."""
        out = []
        for s, e in self.bounds:
            lo, hi = self._chunk(s, e)
            out.extend(range(lo, hi))
        return out

    def __iter__(self) -> Iterator[List[int]]:
        # A generator function: the permutation is drawn at the first batch, after the
        # DataLoader drew its base seed from the same generator, as RandomSampler does.
        if self.shuffle:
            order = torch.randperm(self.n, generator=self.generator).tolist()
            # RandomSampler draws one more permutation when it is exhausted at the end of an
            # epoch; so do we, so that the generator is in the same state as in one process.
            torch.randperm(self.n, generator=self.generator)
        else:
            order = list(range(self.n))
        for s, e in self.bounds:
            lo, hi = self._chunk(s, e)
            if hi > lo:
                yield order[lo:hi]


def make_loaders(datasets: Mapping[str, Dataset], batch_size: int, seed: int, num_workers: int = 0,
                 stream: int = 0, shard: Optional[Shard] = None, pin_memory: bool = False) -> Dict[str, DataLoader]:
    """{split: DataLoader}; train is shuffled with the split's generator. With a ``shard``
    of a data-parallel run (world size > 1), ``batch_size`` is the global batch and each
    loader yields this rank's share of it (ShardedBatchSampler). ``pin_memory``: batches in
    page-locked memory, for a GPU run (copies to the GPU several times faster)."""
    loaders = {}
    sharded = shard is not None and shard.world_size > 1
    for split, ds in datasets.items():
        gen = split_generator(seed, split, stream)
        common = dict(num_workers=int(num_workers or 0), generator=gen, worker_init_fn=_seed_worker,
                      pin_memory=bool(pin_memory))
        if sharded:
            if split == "train" and len(ds) < shard.world_size:
                raise KudaInputError(
                    f"The train split has {len(ds)} samples, fewer than the {shard.world_size} processes "
                    f"of this data-parallel run: every process needs at least one sample per step.")
            sampler = ShardedBatchSampler(len(ds), batch_size, shard, shuffle=(split == "train"), generator=gen)
            loaders[split] = DataLoader(ds, batch_sampler=sampler, **common)
        else:
            loaders[split] = DataLoader(ds, batch_size=int(batch_size), shuffle=(split == "train"), **common)
    return loaders
