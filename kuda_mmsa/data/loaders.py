"""Data loaders whose order and content do not depend on the number of workers.

Each split gets its own ``torch.Generator`` seeded from (seed, split): the shuffle order and
the workers' base seed are drawn from it, never from the global random stream, so the
model's random numbers (initialisation, dropout) are the same whether data loading uses 0
or 8 worker processes, and the data order does not depend on how many random numbers the
model drew. Workers seed Python's and numpy's generators from their torch seed. Only
``train`` is shuffled (metrics do not depend on order; a fixed evaluation order helps
analysis).
"""
from __future__ import annotations

import random
from typing import Dict, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

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


def make_loaders(datasets: Mapping[str, Dataset], batch_size: int, seed: int, num_workers: int = 0,
                 stream: int = 0, sampler_factory=None) -> Dict[str, DataLoader]:
    """{split: DataLoader}; ``sampler_factory(split, dataset, generator)`` may supply a sampler
    (distributed training), else train is shuffled with the split's generator."""
    loaders = {}
    for split, ds in datasets.items():
        gen = split_generator(seed, split, stream)
        sampler = sampler_factory(split, ds, gen) if sampler_factory is not None else None
        loaders[split] = DataLoader(
            ds, batch_size=int(batch_size), num_workers=int(num_workers or 0),
            shuffle=(split == "train") if sampler is None else False, sampler=sampler,
            generator=gen, worker_init_fn=_seed_worker,
        )
    return loaders
