"""What register() puts into MMSA 2.2.1, each piece at module level:

- ``AMIO``: builds KuDA (``kuda_mmsa.model.build_kuda``) as ``self.Model`` for 'kuda'
  (weights saved as ``Model.*``, as MMSA does); stock models unchanged;
- ``ATIO``: the KuDA trainer for 'kuda'; stock trainers unchanged;
- ``MMDataLoader``: kuda_mmsa's validated, seeded loader for every dataset (MMSA's own only
  for TFR-Net's simulated missing data, which it alone implements);
- ``assign_gpu``: the CPU without CUDA (a warning if GPUs were asked for), the GPU with the
  most free memory for ``-g`` without an id, a clear error for an id that does not exist;
- ``get_metrics``: MetricsTop for every dataset of the table (its metrics family);
- ``ReduceLROnPlateau`` without ``verbose`` (removed from torch; MULT, MMIM, TFR-Net pass it);
- ``SafePickleModule``: MMSA's own pickle readers get the restricted unpickler.
"""
from __future__ import annotations

import logging
import os

import numpy
import torch
from MMSA.data_loader import MMDataLoader as _MMSALoader
from MMSA.models import AMIO as _AMIO
from MMSA.trains import ATIO as _ATIO
from torch.optim.lr_scheduler import ReduceLROnPlateau as _ReduceLROnPlateau

from ..data.safe_pickle import SafePickleModule
from ..errors import KudaInputError
from ..model import build_kuda
from ..training.run_config import RunConfig
from ..training.trainer import KuDATrainer
from . import loader
from .args import KUDA, resolve_pretrained
from .datasets import STOCK_DATASETS, metrics_family

logger = logging.getLogger("MMSA")


class AMIO(_AMIO):
    def __init__(self, args):
        if args.get("pretrained") is not None:
            args["pretrained"] = resolve_pretrained(args["pretrained"])
        if str(args["model_name"]).lower() == KUDA:
            torch.nn.Module.__init__(self)
            self.need_model_aligned = False
            self.Model = build_kuda(args)
        else:
            super().__init__(args)

    def forward(self, text_x=None, audio_x=None, video_x=None, *args, text=None, audio=None,
                vision=None, **kwargs):
        # MMSA calls forward(text_x, audio_x, video_x); the KuDA trainer passes text=, audio=,
        # vision= (the model's own names): accept both.
        text_x = text if text_x is None else text_x
        audio_x = audio if audio_x is None else audio_x
        video_x = vision if video_x is None else video_x
        return super().forward(text_x, audio_x, video_x, *args, **kwargs)


class ATIO(_ATIO):
    def getTrain(self, args):
        if str(args["model_name"]).lower() == KUDA:
            return KuDATrainer(RunConfig.from_args(args))    # the run, typed, from here down
        return super().getTrain(args)


def MMDataLoader(args, num_workers=0):
    if args.get("data_missing"):
        if args["dataset_name"] in STOCK_DATASETS:
            return _MMSALoader(args, num_workers)
        raise KudaInputError(
            f"data_missing (TFR-Net's simulated missing modalities) is only supported by MMSA's own "
            f"loader, for datasets {list(STOCK_DATASETS)}; got '{args['dataset_name']}'.")
    return loader.MMDataLoader(args, num_workers)


def _most_free_gpu(n: int) -> int:
    try:
        if os.environ.get("CUDA_VISIBLE_DEVICES"):
            raise RuntimeError("pynvml indices ignore CUDA_VISIBLE_DEVICES")
        import pynvml

        pynvml.nvmlInit()
        used = [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used
                for i in range(min(n, pynvml.nvmlDeviceGetCount()))]
        return int(numpy.argmin(used)) if used else 0
    except Exception:
        try:
            free = [torch.cuda.mem_get_info(i)[0] for i in range(n)]
            return int(numpy.argmax(free)) if free else 0
        except Exception:
            return 0


def assign_gpu(gpu_ids, memory_limit=1e16):
    try:
        ids = [int(g) for g in (gpu_ids or [])]
    except (TypeError, ValueError):
        raise KudaInputError(f"-g/--gpu-ids takes integer GPU indices; got {list(gpu_ids)}.") from None
    if not torch.cuda.is_available():
        if ids:
            logger.warning(f"GPU(s) {ids} requested but CUDA is not available; using the CPU.")
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if not ids:
        ids = [_most_free_gpu(n)]
        logger.info(f"Using GPU {ids[0]}.")
    if ids[0] < 0 or ids[0] >= n:
        raise KudaInputError(
            f"GPU {ids[0]} requested (-g/--gpu-ids) but only {n} CUDA device(s) are visible (0..{n - 1}).")
    return torch.device(f"cuda:{ids[0]}")


def get_metrics(self, datasetName):
    """MetricsTop.getMetics for every dataset of the table (MMSA's own spelling)."""
    family = metrics_family(datasetName) or str(datasetName).upper()
    if family not in self.metrics_dict:
        raise KudaInputError(
            f"No MMSA metrics for dataset '{datasetName}'; metrics families: {sorted(self.metrics_dict)}.")
    return self.metrics_dict[family]


class ReduceLROnPlateau(_ReduceLROnPlateau):
    def __init__(self, *a, verbose=None, **kw):  # 'verbose' was removed from torch
        super().__init__(*a, **kw)


__all__ = ["AMIO", "ATIO", "MMDataLoader", "assign_gpu", "get_metrics", "ReduceLROnPlateau",
           "SafePickleModule"]
