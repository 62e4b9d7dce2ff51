"""Data-parallel training under torchrun with gloo and 2 CPU processes, on the tiny demo data
with a fixed global batch: the result equals one process's within float tolerance, exactly
one result row, one log and one weights file are written, stage 1 runs once (on rank 0), a
rank killed midway is reported and the run resumes to the same result; the refusals come
before the process group starts. Plus the sampler and device rules on their own."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_kuda import write_tiny_config  # tests/ is on sys.path

from kuda_mmsa.data.loaders import Shard, global_batch_size, make_loaders
from kuda_mmsa.errors import KudaInputError
from kuda_mmsa.training.distributed import DistContext, choose_device, env_context

ROOT = Path(__file__).resolve().parents[1]
KILL_RANK_1 = '''
import os, signal, sys
from kuda_mmsa.training import trainer

if os.environ.get("RANK") == "1":
    _orig = trainer.KuDATrainer.do_test

    def do_test(self, model, loader, mode="VAL", **kw):
        if mode == "VAL" and len(self.history) == 1:      # in the second epoch
            os.kill(os.getpid(), signal.SIGKILL)
        return _orig(self, model, loader, mode, **kw)

    trainer.KuDATrainer.do_test = do_test
from kuda_mmsa.cli.main import main
sys.exit(main(prog="python -m kuda_mmsa"))
'''


# ---------------------------------------------------------------------- the sampler, on its own
@pytest.mark.parametrize("n,batch,world", [(30, 8, 2), (31, 8, 4), (9, 4, 4), (12, 6, 3), (5, 8, 2)])
def test_ranks_together_see_the_batches_of_one_process(n, batch, world):
    ds = list(range(n))
    one = make_loaders({"train": ds, "test": ds}, batch, seed=7)
    ranks = [make_loaders({"train": ds, "test": ds}, batch, seed=7, shard=Shard(r, world)) for r in range(world)]
    for epoch in range(2):                       # the same permutations, epoch after epoch
        single = [b.tolist() for b in one["train"]]
        shares = [[b.tolist() for b in r["train"]] for r in ranks]
        merged = [sum((s[i] for s in shares), []) for i in range(len(shares[0]))]
        flat = sum(single, [])
        assert sum(merged, []) == flat and sorted(flat) == ds
        assert all(len(s) == len(ranks[0]["train"]) for s in shares)          # same number of steps
        assert all(len(b) >= 1 for s in shares for b in s)                      # nobody idles a step
        sampler = ranks[0]["train"].batch_sampler
        assert [sampler.global_size(i) for i in range(len(sampler))] == [len(b) for b in merged]
        if n % batch >= world or n % batch == 0:
            assert merged == single
    assert all(torch.equal(r["train"].generator.get_state(), one["train"].generator.get_state()) for r in ranks)
    positions = sorted(p for r in ranks for p in r["test"].batch_sampler.local_positions())
    assert positions == ds                       # evaluation: every sample on exactly one rank


def test_global_batch_must_split_equally_or_be_per_rank():
    assert global_batch_size(8, 2) == 8 and global_batch_size(8, 1) == 8
    assert global_batch_size(8, 3, per_rank=True) == 24
    with pytest.raises(KudaInputError, match=r"batch_size 8.*3 processes.*per_rank_batch"):
        global_batch_size(8, 3)


def test_device_and_backend_rules():
    two = DistContext(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert choose_device(two, [], "auto", cuda_count=0)[:2] == (torch.device("cpu"), "gloo")
    with pytest.raises(KudaInputError, match="nccl needs CUDA GPUs"):
        choose_device(two, [], "nccl", cuda_count=0)
    assert choose_device(two, [], "auto", cuda_count=2)[:2] == (torch.device("cuda", 1), "nccl")
    dev, backend, notes = choose_device(two, [3], "auto", cuda_count=4)      # -g names fewer GPUs than ranks
    assert (dev, backend) == (torch.device("cuda", 1), "nccl") and "LOCAL_RANK" in notes[0]
    assert choose_device(two, [2, 3], "auto", cuda_count=4)[0] == torch.device("cuda", 3)   # -g by LOCAL_RANK
    assert choose_device(two, [], "auto", cuda_count=1)[:2] == (torch.device("cuda", 0), "gloo")  # shared GPU
    with pytest.raises(KudaInputError, match="one GPU per process"):
        choose_device(two, [], "nccl", cuda_count=1)
    assert env_context({}) == DistContext()
    assert env_context({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}) == \
        DistContext(2, 4, 0, 2)


# ---------------------------------------------------------------------- torchrun, 2 gloo processes
@pytest.fixture(scope="module")
def ddp(tiny_demo_pickle, tiny_bert_dir, tmp_path_factory):
    """A tiny run with nothing random left but the data order: dropout 0 everywhere (the
    tiny BERT copied with dropout 0), ce_weight 0 (its negatives are per rank), fp32."""
    root = tmp_path_factory.mktemp("ddp")
    bert = root / "bert"
    shutil.copytree(tiny_bert_dir, bert)
    cfg = json.loads((bert / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (bert / "config.json").write_text(json.dumps(cfg))
    config = write_tiny_config(root / "tiny.yaml", precision="fp32", ce_weight=0.0, KeyEval="Corr", batch_size=8,
                               epochs=2, fusion_dropout=0.0, av_dropout=0.0, adapter_dropout=0.0,
                               decoder_dropout=0.0)

    def argv(out: Path, *extra):
        return ["-m", "kuda", "-d", "demo", "--feature-file", str(tiny_demo_pickle), "-c", str(config),
                "-s", "1111", "-n", "0", "--pretrained", str(bert), "--knowledge-dir", str(root / "knowledge"),
                "--model-save-dir", str(out / "m"), "--res-save-dir", str(out / "r"), "--log-dir", str(out / "l"),
                "--no-progress", "--no-plots", *extra]

    def torchrun(out: Path, script=None):
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        target = [str(script)] if script else ["-m", "kuda_mmsa"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *target, *argv(out)]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=root)

    first = torchrun(root / "two")
    return {"root": root, "argv": argv, "torchrun": torchrun, "two": root / "two", "first": first}


def _rows(out: Path):
    with open(out / "r" / "normal" / "demo.csv") as f:
        return list(csv.DictReader(f))


def _logged_result(text: str) -> dict:
    line = re.findall(r"Result for seed 1111: (.*)", text)[-1]
    return {k: float(v) for k, v in (item.split(" ") for item in line.split(", "))}


def test_two_gloo_ranks_equal_one_process_and_write_once(ddp, tmp_path):
    first = ddp["first"]
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    assert "Data-parallel run: 2 processes (gloo)" in out and "global batch 8 (4 per process)" in out
    assert "prepared on rank 0 only" in out
    assert out.count("running stage 1 now") == 1             # stage 1 once, on rank 0
    two = ddp["two"]
    assert len(_rows(two)) == 1
    assert sorted(p.name for p in (two / "m").iterdir()) == ["kuda-demo.pth", "kuda-demo.pth.json", "runs"]
    own = sorted(p.name for p in (two / "m" / "runs").iterdir() if not p.name.startswith("."))  # one run, rank 0's
    assert len(own) == 2 and own[0].startswith("kuda-demo-seed1111-") and own[1] == own[0] + ".json"
    assert [p.name for p in (two / "l").iterdir()] == ["kuda-demo.log"]
    assert json.loads((two / "m" / "kuda-demo.pth.json").read_text())["epoch"] == 2

    from kuda_mmsa.cli.main import main

    one = tmp_path / "one"
    assert main(ddp["argv"](one)) == 0                        # one process, the same knowledge
    with open(one / "l" / "kuda-demo.log") as f:
        single = _logged_result(f.read())
    with open(two / "l" / "kuda-demo.log") as f:
        parallel = _logged_result(f.read())
    assert parallel.keys() == single.keys()
    for k in single:
        assert parallel[k] == pytest.approx(single[k], abs=2e-4), k
    a = torch.load(one / "m" / "kuda-demo.pth", weights_only=True)
    b = torch.load(two / "m" / "kuda-demo.pth", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-4, rtol=1e-3, msg=k)


def test_a_killed_rank_is_reported_and_the_run_resumes_to_the_same_result(ddp):
    assert ddp["first"].returncode == 0
    out = ddp["root"] / "killed"
    script = ddp["root"] / "kill_rank_1.py"
    script.write_text(KILL_RANK_1)
    killed = ddp["torchrun"](out, script)
    text = killed.stdout + killed.stderr
    assert killed.returncode != 0
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", text) and "SIGKILL" in text, text[-3000:]
    [resume] = (out / "m" / "runs").glob("*.pth.resume")       # epoch 1, written by rank 0
    assert resume.name.startswith("kuda-demo-seed1111-")
    assert not (out / "r" / "normal" / "demo.csv").exists()

    resumed = ddp["torchrun"](out)
    text = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, text[-4000:]
    assert "Resuming stage 2 after epoch 1" in text
    assert len(_rows(out)) == 1 and not resume.exists()
    a = torch.load(ddp["two"] / "m" / "kuda-demo.pth", weights_only=True)
    b = torch.load(out / "m" / "kuda-demo.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)             # same seed, same world size: same result


def test_refusals_come_before_the_process_group_starts(ddp, tmp_path, monkeypatch, capsys):
    import torch.distributed as dist

    from kuda_mmsa.cli.main import main

    for k, v in {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3"}.items():
        monkeypatch.setenv(k, v)
    assert main(ddp["argv"](tmp_path, "-v", "0")) == 2
    err = capsys.readouterr().err
    assert "batch_size 8" in err and "3 processes" in err and "Traceback" not in err
    assert main(ddp["argv"](tmp_path, "--dist-backend", "nccl")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if not torch.cuda.is_available():
        assert "nccl needs CUDA GPUs" in err
    assert not dist.is_initialized()
    assert not (tmp_path / "r" / "normal").exists()
