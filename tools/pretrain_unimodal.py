#!/usr/bin/env python
"""Stage 1 of KuDA: pre-train each modality's encoder + adapters + decoder on its unimodal
labels and write one knowledge checkpoint per modality.

    python tools/pretrain_unimodal.py -d sims2
    python tools/pretrain_unimodal.py -d demo --modalities T --epochs 3
    python tools/pretrain_unimodal.py -d sims2 --data-root /data/MMSA --pretrained /models/bert-base-chinese

Checkpoints go to <knowledge-dir>/<dataset>/<text encoder>/{text,vision,audio}.pth, where
<knowledge-dir> is --knowledge-dir, else $KUDA_MMSA_KNOWLEDGE_DIR, else ~/MMSA/knowledge;
`python -m MMSA -m kuda -d DATASET` finds them there. An interrupted run resumes from the
last finished epoch. Hyper-parameters: the `pretrain` section of configs/kuda.yaml.
"""
import argparse
import logging
import sys

from kuda_mmsa.errors import KudaInputError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", default="sims2", help="sims, sims2/simsv2, mosi, mosei or demo (default sims2)")
    p.add_argument("--modalities", nargs="+", default=["T", "V", "A"], help="any of T V A (default all)")
    p.add_argument("--epochs", default=None,
                   help="epochs for every modality (e.g. 20) or per modality (e.g. T=100,V=100,A=50); "
                        "default: configs/kuda.yaml pretrain.epochs")
    p.add_argument("-c", "--config", default="", help="YAML/JSON file overriding configs/kuda.yaml")
    p.add_argument("--pretrained", default=None, help="text encoder: HF name or local BERT folder")
    p.add_argument("--data-root", default=None, help="folder of MMSA's datasets (else $MMSA_DATA_ROOT, ~/MMSA/datasets)")
    p.add_argument("--feature-file", default=None, help="any MMSA-format feature pickle")
    p.add_argument("--knowledge-dir", default=None, help="where checkpoints go (else $KUDA_MMSA_KNOWLEDGE_DIR, ~/MMSA/knowledge)")
    p.add_argument("-g", "--gpu-ids", action="append", default=[], help="GPU id (default: CPU if none)")
    p.add_argument("-s", "--seed", type=int, default=1111)
    p.add_argument("-n", "--num-workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def epochs_arg(text):
    if text is None:
        return None
    if "=" not in text:
        return {m: int(text) for m in "TVA"}
    out = {}
    for part in text.split(","):
        k, v = part.split("=")
        out[k.strip().upper()] = int(v)
    return out


def main(argv=None) -> int:
    opts = parse_args(argv)
    logger = logging.getLogger("MMSA")
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s - %(message)s"))
    logger.addHandler(handler)
    try:
        import torch

        from kuda_mmsa.mmsa.config import configure, get_config_regression
        from kuda_mmsa.pretrain import pretrain_unimodal

        configure(data_root=opts.data_root, knowledge_dir=opts.knowledge_dir, pretrained=opts.pretrained)
        args = get_config_regression("kuda", opts.dataset, opts.config)
        args["custom_feature"] = opts.feature_file
        args["pretrained_arg"] = opts.pretrained
        use_cuda = bool(opts.gpu_ids) and torch.cuda.is_available()
        device = torch.device(f"cuda:{int(opts.gpu_ids[0])}" if use_cuda else "cpu")
        paths = pretrain_unimodal(args, opts.modalities, epochs_arg(opts.epochs), device=device, seed=opts.seed,
                                  num_workers=opts.num_workers, progress=not opts.no_progress)
    except KudaInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for m, path in paths.items():
        print(f"{m}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
