"""kuda_mmsa.data.loaders, in-process: how a data-parallel rank's batches are cut from the
global batches one process would see (kuda_mmsa/data/loaders.py's module docstring), the
global batch size and its errors, and the seeded per-split loaders. References: the rule of
the docstring written here with numpy's array_split, and a one-process DataLoader."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kuda_mmsa.data.loaders import Shard, ShardedBatchSampler, global_batch_size, make_loaders, split_generator
from kuda_mmsa.errors import KudaInputError


def _expected_shares(order, batch_size, world, merge_tail=True):
    """[step][rank] -> positions: global batches of batch_size consecutive items of order
    (a last one smaller than the world merged into the one before), each cut into world
    contiguous near-equal chunks, larger chunks first."""
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if merge_tail and len(batches) > 1 and len(batches[-1]) < world:
        batches[-2:] = [batches[-2] + batches[-1]]
    return [[list(c) for c in np.array_split(np.array(b, dtype=int), world)] for b in batches]


@pytest.mark.parametrize("n, batch_size, world", [(10, 4, 2), (13, 5, 3), (17, 6, 4), (9, 4, 2), (12, 4, 1),
                                                  (7, 8, 3)])
def test_each_rank_takes_its_contiguous_share_of_every_global_batch(n, batch_size, world):
    want = _expected_shares(list(range(n)), batch_size, world)
    for rank in range(world):
        sampler = ShardedBatchSampler(n, batch_size, Shard(rank, world))
        assert len(sampler) == len(want)
        assert [sampler.global_size(s) for s in range(len(want))] == [sum(map(len, w)) for w in want]
        assert list(sampler) == [w[rank] for w in want if w[rank]]
        assert sampler.local_positions() == [p for w in want for p in w[rank]]


def test_a_last_global_batch_smaller_than_the_world_joins_the_one_before_unless_told_not_to():
    """9 samples, global batch 4, 2 ranks: the last batch (1 sample) would leave rank 1
    without a sample at the last step."""
    merged = [list(ShardedBatchSampler(9, 4, Shard(r, 2))) for r in (0, 1)]
    assert merged == [[[0, 1], [4, 5, 6]], [[2, 3], [7, 8]]]
    kept = [list(ShardedBatchSampler(9, 4, Shard(r, 2), merge_tail=False)) for r in (0, 1)]
    assert kept == [[[0, 1], [4, 5], [8]], [[2, 3], [6, 7]]]
    assert len(ShardedBatchSampler(9, 4, Shard(1, 2), merge_tail=False)) == 3
    assert list(ShardedBatchSampler(8, 4, Shard(0, 2))) == [[0, 1], [4, 5]]      # nothing to merge
    assert list(ShardedBatchSampler(1, 4, Shard(0, 2))) == [[0]]                # one batch: kept


def test_shuffled_ranks_together_see_the_one_process_batches_epoch_after_epoch():
    """In a DataLoader with the split's generator, the same permutation as
    DataLoader(shuffle=True) with that generator, in every epoch (the generator ends each
    epoch in the same state as in one process)."""
    n, batch_size, world = 23, 6, 3
    data = list(range(n))
    one = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(5))
    ranks = []
    for r in range(world):
        gen = torch.Generator().manual_seed(5)
        sampler = ShardedBatchSampler(n, batch_size, Shard(r, world), shuffle=True, generator=gen)
        ranks.append(DataLoader(data, batch_sampler=sampler, generator=gen))
    for epoch in range(3):
        single = [b.tolist() for b in one]
        per_rank = [[b.tolist() for b in d] for d in ranks]
        for step, batch in enumerate(single):
            assert sum((per_rank[r][step] for r in range(world)), []) == batch, (epoch, step)
    with pytest.raises(ValueError, match="needs its split's generator"):
        ShardedBatchSampler(n, batch_size, Shard(0, 2), shuffle=True)


@pytest.mark.parametrize("batch_size, world, per_rank, want", [(32, 1, False, 32), (32, 0, False, 32),
                                                                (32, 4, False, 32), (8, 2, True, 16),
                                                                (8, 1, True, 8), (6, 3, False, 6)])
def test_the_global_batch_is_batch_size_or_batch_size_per_rank(batch_size, world, per_rank, want):
    assert global_batch_size(batch_size, world, per_rank) == want


def test_by_default_a_run_is_one_process_with_batch_size_split_over_the_ranks():
    assert list(ShardedBatchSampler(7, 3, Shard())) == [[0, 1, 2], [3, 4, 5], [6]]
    assert global_batch_size(8, 2) == 8 and global_batch_size(8, 1) == 8


def test_a_global_batch_the_ranks_cannot_share_equally_is_refused_with_two_choices():
    with pytest.raises(KudaInputError, match=r"batch_size 10\) cannot be split equally over 4 processes .*"
                                             r"\(e\.g\. 8 or 12\), or set per_rank_batch: true .*global batch 40\)"):
        global_batch_size(10, 4)
    with pytest.raises(KudaInputError, match=r"\(e\.g\. 4 or 4\)"):
        global_batch_size(3, 4)


def test_sharded_loaders_yield_each_ranks_share_and_refuse_a_train_split_smaller_than_the_world():
    data = {"train": list(range(11)), "valid": list(range(5)), "test": list(range(7))}
    for rank in (0, 1):
        loaders = make_loaders(data, 4, 3, shard=Shard(rank, 2))
        assert set(loaders) == set(data)
        for split in ("valid", "test"):                              # not shuffled: the split's order
            want = _expected_shares(data[split], 4, 2)
            assert [b.tolist() for b in loaders[split]] == [w[rank] for w in want if w[rank]]
        one = DataLoader(data["train"], batch_size=4, shuffle=True, generator=split_generator(3, "train"))
        order = [i for b in one for i in b.tolist()]                # one process's train order
        assert sorted(order) == data["train"]
        want = _expected_shares(order, 4, 2)
        assert [b.tolist() for b in loaders["train"]] == [w[rank] for w in want if w[rank]]
    unsharded = make_loaders(data, 4, 3, shard=Shard(0, 1))
    assert [b.tolist() for b in unsharded["test"]] == [[0, 1, 2, 3], [4, 5, 6]]
    with pytest.raises(KudaInputError, match="The train split has 2 samples, fewer than the 3 processes"):
        make_loaders({"train": [0, 1], "test": list(range(9))}, 3, 0, shard=Shard(0, 3))
    make_loaders({"train": list(range(3)), "test": [0]}, 3, 0, shard=Shard(0, 3))    # one each: fine


def test_every_split_and_stream_draws_its_own_seeded_generator():
    draw = lambda *a: torch.randint(0, 2 ** 30, (4,), generator=split_generator(*a)).tolist()
    keys = [(1, "train"), (1, "valid"), (1, "test"), (1, "other"), (2, "train"), (1, "train", 1), (1, "train", 2)]
    draws = [draw(*k) for k in keys]
    assert all(draws[i] != draws[j] for i in range(len(keys)) for j in range(i))
    assert draws == [draw(*k) for k in keys]                        # seeded: the same again


class _Draws(torch.utils.data.Dataset):
    """Each item: the worker's torch seed and a draw of Python's and numpy's generators."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        import random

        # as text: the default collate would make a tensor of the seed (which may not fit an int64)
        return f"{torch.initial_seed()} {random.random()!r} {float(np.random.random())!r}"


def test_loaders_pass_workers_and_pinning_and_workers_seed_python_and_numpy_from_torch():
    import random

    data = {"train": list(range(6)), "test": list(range(4))}
    plain = make_loaders(data, 4, 0)
    assert {s: (d.num_workers, d.pin_memory) for s, d in plain.items()} == {"train": (0, False), "test": (0, False)}
    assert {d.num_workers for d in make_loaders(data, 4, 0, num_workers=None).values()} == {0}
    asked = make_loaders(data, 4, 0, num_workers=2, pin_memory=True)
    assert {s: (d.num_workers, d.pin_memory) for s, d in asked.items()} == {"train": (2, True), "test": (2, True)}
    worker = make_loaders({"test": _Draws()}, 1, 7, num_workers=1)["test"]
    items = [text.split() for [text] in worker]
    seed = int(items[0][0]) % 2 ** 32                     # one worker: the same seed for both items
    py, npy = random.Random(seed), np.random.RandomState(seed)
    assert [(float(b), float(c)) for _, b, c in items] == [(py.random(), float(npy.random_sample())) for _ in items]


def test_any_torch_seed_makes_split_generators():
    """MMDataLoader seeds from torch.initial_seed(), which can be any 64-bit number."""
    for seed in (0, 2 ** 63 + 5, 2 ** 64 - 1):
        a, b = split_generator(seed, "train"), split_generator(seed, "train")
        assert torch.randperm(20, generator=a).tolist() == torch.randperm(20, generator=b).tolist()


def test_a_worker_seeds_python_and_numpy_from_its_torch_seed_modulo_2_to_the_32():
    """What each worker process runs first (the loaders' worker_init_fn), here in this process
    (the in-process twin of the worker test above): Python's and numpy's generators seeded
    from torch.initial_seed() % 2 ** 32 (numpy takes no larger seed)."""
    import random

    init = make_loaders({"train": list(range(4))}, 2, 0)["train"].worker_init_fn
    saved = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        seed = 2 ** 40 + 2 ** 32 + 12345
        torch.manual_seed(seed)
        init(0)
        got = random.random(), float(np.random.random_sample())
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])
    want = seed % 2 ** 32
    assert got == (random.Random(want).random(), float(np.random.RandomState(want).random_sample()))
