"""``register()``: make MMSA plugin-aware (idempotent).

``MMSA.run`` looks up ``AMIO``, ``ATIO``, ``MMDataLoader``, ``get_config_regression``,
``get_config_tune``, ``assign_gpu``, ``torch`` and ``np`` as module globals at call time;
register() rebinds them:

- AMIO: 'kuda' -> ``kuda_mmsa.model.build_kuda(args)`` as ``self.Model`` (weights saved as
  ``Model.*``, as MMSA does); stock models unchanged. ``pretrained`` is resolved first.
- ATIO: 'kuda' -> ``kuda_mmsa.mmsa.trainer.KuDATrainer(args)``; stock unchanged.
- MMDataLoader -> kuda_mmsa.mmsa.data.MMDataLoader (validated, any dataset name).
- get_config_* -> kuda_mmsa.mmsa.config (kuda + new datasets for stock models).
- assign_gpu: CPU without CUDA (a warning if GPUs were requested), the GPU with most free
  memory for ``-g`` with no id (pynvml, else torch), a clear error for a missing id.
- ``torch`` proxy: ``torch.cuda.set_device(cpu)`` is a no-op (MMSA crashed on GPU-less
  machines); ``torch.load`` maps to CPU first.
- ``np`` proxy: mean/std give Python floats, so result CSV cells read ``(80.1, 1.2)``
  rather than ``(np.float64(80.1), np.float64(1.2))`` under numpy 2.
- MetricsTop.getMetics maps every dataset of the table to its metrics family.
- MULT / MMIM / TFR_NET trainers: ReduceLROnPlateau without ``verbose`` (torch >= 2.2).
- MMSA.MMSA_run / MMSA.run.MMSA_run: '' for config_file or a save dir means the default
  (MMSA raised FileNotFoundError / wrote into the cwd); gpu_ids is copied, not mutated.

Nothing heavy is imported at module import time (the start-up hook imports this package).
"""
from __future__ import annotations

STOCK_CLI_MODELS = ["lf_dnn", "ef_lstm", "tfn", "lmf", "mfn", "graph_mfn", "mult",
                    "bert_mag", "misa", "mfm", "mlf_dnn", "mtfn", "mlmf", "self_mm", "mmim"]
EXTRA_STOCK_MODELS = ["mctn", "tfr_net"]   # in MMSA's tables, not in its CLI choices
KUDA = "kuda"

_state = {"done": False, "patches": None}


def model_choices(cli: bool = False) -> list:
    stock = STOCK_CLI_MODELS + ([] if cli else EXTRA_STOCK_MODELS)
    return [KUDA] + stock


def _patches():
    if _state["patches"] is not None:
        return _state["patches"]
    import functools
    import logging
    import os
    import types

    import numpy
    import torch
    from MMSA.data_loader import MMDataLoader as _orig_loader
    from MMSA.models import AMIO as _AMIO
    from MMSA.trains import ATIO as _ATIO

    from ..errors import KudaInputError
    from . import config as cfg
    from . import data as kdata
    from .datasets import STOCK_DATASETS, metrics_family

    logger = logging.getLogger("MMSA")

    class AMIO(_AMIO):
        def __init__(self, args):
            if args.get("pretrained") is not None:
                args["pretrained"] = cfg.resolve_pretrained(args["pretrained"])
            if str(args["model_name"]).lower() == KUDA:
                torch.nn.Module.__init__(self)
                self.need_model_aligned = False
                from ..model import build_kuda

                self.Model = build_kuda(args)
            else:
                super().__init__(args)

        def forward(self, text_x=None, audio_x=None, video_x=None, *args, text=None,
                    audio=None, vision=None, **kwargs):
            # MMSA calls forward(text_x, audio_x, video_x); the KuDA trainer passes
            # text=, audio=, vision= (the model's own names): accept both.
            text_x = text if text_x is None else text_x
            audio_x = audio if audio_x is None else audio_x
            video_x = vision if video_x is None else video_x
            return super().forward(text_x, audio_x, video_x, *args, **kwargs)

    class ATIO(_ATIO):
        def getTrain(self, args):
            if str(args["model_name"]).lower() == KUDA:
                from .trainer import KuDATrainer

                return KuDATrainer(args)
            return super().getTrain(args)

    def MMDataLoader(args, num_workers=0):
        if args.get("data_missing"):
            if args["dataset_name"] in STOCK_DATASETS:
                return _orig_loader(args, num_workers)
            raise KudaInputError(
                f"data_missing (TFR-Net's simulated missing modalities) is only supported "
                f"by MMSA's own loader, for datasets {list(STOCK_DATASETS)}; got "
                f"'{args['dataset_name']}'.")
        return kdata.MMDataLoader(args, num_workers)

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
            best = 0
            try:
                if os.environ.get("CUDA_VISIBLE_DEVICES"):
                    raise RuntimeError("pynvml indices ignore CUDA_VISIBLE_DEVICES")
                import pynvml

                pynvml.nvmlInit()
                used = [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used
                        for i in range(min(n, pynvml.nvmlDeviceGetCount()))]
                best = int(numpy.argmin(used)) if used else 0
            except Exception:
                try:
                    free = [torch.cuda.mem_get_info(i)[0] for i in range(n)]
                    best = int(numpy.argmax(free)) if free else 0
                except Exception:
                    best = 0
            logger.info(f"Using GPU {best}.")
            ids = [best]
        if ids[0] < 0 or ids[0] >= n:
            raise KudaInputError(
                f"GPU {ids[0]} requested (-g/--gpu-ids) but only {n} CUDA device(s) are "
                f"visible (0..{n - 1}).")
        return torch.device(f"cuda:{ids[0]}")

    class _Cuda:
        def __getattr__(self, name):
            return getattr(torch.cuda, name)

        def set_device(self, device):
            if isinstance(device, int) or torch.device(device).type == "cuda":
                torch.cuda.set_device(device)

        def empty_cache(self):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    class _Torch(types.ModuleType):
        def __getattr__(self, name):
            return getattr(torch, name)

    torch_proxy = _Torch("torch")
    torch_proxy.cuda = _Cuda()

    @functools.wraps(torch.load)
    def _load(f, *a, **kw):
        if not a and "map_location" not in kw:
            kw["map_location"] = "cpu"
        return torch.load(f, *a, **kw)

    torch_proxy.load = _load

    class _Numpy(types.ModuleType):
        def __getattr__(self, name):
            return getattr(numpy, name)

    np_proxy = _Numpy("numpy")
    np_proxy.mean = lambda *a, **k: float(numpy.mean(*a, **k))
    np_proxy.std = lambda *a, **k: float(numpy.std(*a, **k))

    from torch.optim.lr_scheduler import ReduceLROnPlateau as _R

    class ReduceLROnPlateau(_R):
        def __init__(self, *a, verbose=None, **kw):  # 'verbose' was removed from torch
            super().__init__(*a, **kw)

    def getMetics(self, datasetName):
        fam = metrics_family(datasetName) or str(datasetName).upper()
        if fam not in self.metrics_dict:
            raise KudaInputError(
                f"No MMSA metrics for dataset '{datasetName}'; metrics families: "
                f"{sorted(self.metrics_dict)} (set by kuda_mmsa/mmsa/datasets.py).")
        return self.metrics_dict[fam]

    _state["patches"] = dict(AMIO=AMIO, ATIO=ATIO, MMDataLoader=MMDataLoader,
                             assign_gpu=assign_gpu, torch=torch_proxy, np=np_proxy,
                             ReduceLROnPlateau=ReduceLROnPlateau, getMetics=getMetics)
    return _state["patches"]


def _wrap_run(orig):
    import functools

    @functools.wraps(orig)
    def MMSA_run(model_name, dataset_name, config_file=None, config=None, seeds=[],
                 is_tune=False, tune_times=50, custom_feature=None, feature_T=None,
                 feature_A=None, feature_V=None, gpu_ids=[0], num_workers=4,
                 verbose_level=1, model_save_dir=None, res_save_dir=None, log_dir=None):
        from pathlib import Path

        from . import config as cfg
        from .datasets import canonical_name

        # The KuDA trainer writes its training curves next to MMSA's log.
        cfg.configure(log_dir=str(log_dir or Path.home() / "MMSA" / "logs"))
        return orig(
            model_name=str(model_name).lower(), dataset_name=canonical_name(dataset_name),
            config_file=config_file or None, config=config, seeds=list(seeds or []),
            is_tune=is_tune, tune_times=tune_times, custom_feature=custom_feature or None,
            feature_T=feature_T or "", feature_A=feature_A or "", feature_V=feature_V or "",
            gpu_ids=list(gpu_ids if gpu_ids is not None else []), num_workers=num_workers,
            verbose_level=verbose_level, model_save_dir=model_save_dir or None,
            res_save_dir=res_save_dir or None, log_dir=log_dir or None)

    MMSA_run._kuda_wrapped = orig
    return MMSA_run


def register() -> None:
    """Make MMSA plugin-aware (see module docstring). Idempotent; cheap after the first
    call."""
    if _state["done"]:
        return
    import importlib

    import MMSA
    import MMSA.config as mconfig
    import MMSA.run as run
    from MMSA.utils.metricsTop import MetricsTop

    from . import config as cfg

    p = _patches()
    run.AMIO = p["AMIO"]
    run.ATIO = p["ATIO"]
    run.MMDataLoader = p["MMDataLoader"]
    run.get_config_regression = cfg.get_config_regression
    run.get_config_tune = cfg.get_config_tune
    run.assign_gpu = p["assign_gpu"]
    run.torch = p["torch"]
    run.np = p["np"]
    for mod in (MMSA, mconfig):
        mod.get_config_regression = cfg.get_config_regression
        mod.get_config_tune = cfg.get_config_tune
    if not hasattr(run.MMSA_run, "_kuda_wrapped"):
        wrapped = _wrap_run(run.MMSA_run)
        run.MMSA_run = wrapped
        MMSA.MMSA_run = wrapped
    MetricsTop.getMetics = p["getMetics"]
    for name in ("MMSA.trains.singleTask.MULT", "MMSA.trains.singleTask.MMIM",
                 "MMSA.trains.missingTask.TFR_NET"):
        try:
            importlib.import_module(name).ReduceLROnPlateau = p["ReduceLROnPlateau"]
        except Exception:
            pass
    _state["done"] = True


def is_registered() -> bool:
    return _state["done"]
