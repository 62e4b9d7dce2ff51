"""The MMSA command line, extended: ``python -m MMSA`` (through the start-up hook) and
``python -m kuda_mmsa`` run this.

Every stock MMSA 2.2.1 flag with the same name and default, except: ``-n`` defaults to
min(8, CPU count); ``-c ''`` and empty save dirs mean the defaults (MMSA raised
FileNotFoundError / wrote into the cwd). Added: model ``kuda``; datasets ``simsv2``
(alias ``sims2``) and ``demo``; ``--data-root``, ``--feature-file``, ``--knowledge-dir``,
``--pretrained``, ``--no-plots``. Bad input (KudaInputError) prints one paragraph, no
traceback, and exits with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import KudaInputError
from .datasets import canonical_name, dataset_choices
from .register import model_choices


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="MMSA (multimodal sentiment analysis) with the KuDA plugin: train and "
                    "test MSA models with MMSA's loader, metrics, result CSVs and logs.")
    p.add_argument('-m', '--model', type=str.lower, default='lf_dnn', choices=model_choices(),
                   help='Name of model')
    p.add_argument('-d', '--dataset', type=str.lower, default='sims', choices=dataset_choices(),
                   help='Name of dataset (sims2 = simsv2; demo = synthetic, no download)')
    p.add_argument('-c', '--config', type=str, default='',
                   help='Path to config file (YAML or JSON). If not specified, default config '
                        'file will be used.')
    p.add_argument('-t', '--tune', action='store_true',
                   help='Whether to tune hyper parameters. Default: False')
    p.add_argument('-tt', '--tune-times', type=int, default=50,
                   help='Number of times to tune hyper parameters. Default: 50')
    p.add_argument('-s', '--seeds', action='append', type=int, default=[],
                   help='Random seeds. Specify multiple times for multiple seeds. '
                        'Default: [1111, 1112, 1113, 1114, 1115]')
    p.add_argument('-n', '--num-workers', type=int, default=_default_workers(),
                   help=f'Number of workers used to load data. Default: min(8, CPUs) = '
                        f'{_default_workers()}')
    p.add_argument('-v', '--verbose', type=int, default=1, choices=[0, 1, 2],
                   help='Verbose level of stdout. 0 for error, 1 for info, 2 for debug. Default: 1')
    p.add_argument('--model-save-dir', type=str, default='',
                   help='Path to save trained models. Default: "~/MMSA/saved_models"')
    p.add_argument('--res-save-dir', type=str, default='',
                   help='Path to save csv results. Default: "~/MMSA/results"')
    p.add_argument('--log-dir', type=str, default='',
                   help='Path to save log files. Default: "~/MMSA/logs"')
    p.add_argument('-g', '--gpu-ids', action='append', type=int, default=[],
                   help='Specify which gpus to use. If an empty list is supplied, will '
                        'automatically assign to the most memory-free gpu (CPU when there '
                        'is none). Currently only support single gpu. Default: []')
    p.add_argument('-Ft', '--feature-T', type=str, default='',
                   help='Path to custom text feature file. Default: ""')
    p.add_argument('-Fa', '--feature-A', type=str, default='',
                   help='Path to custom audio feature file. Default: ""')
    p.add_argument('-Fv', '--feature-V', type=str, default='',
                   help='Path to custom video feature file. Default: ""')
    g = p.add_argument_group('kuda_mmsa')
    g.add_argument('--data-root', type=str, default=None,
                   help='Folder holding MMSA datasets with MMSA\'s relative file names '
                        '(e.g. SIMS/Processed/unaligned_39.pkl). Default: $MMSA_DATA_ROOT, '
                        'else ~/MMSA/datasets')
    g.add_argument('--feature-file', type=str, default=None,
                   help='Any MMSA-format feature pickle (all three modalities); overrides '
                        'the dataset\'s file (MMSA_run custom_feature)')
    g.add_argument('--knowledge-dir', type=str, default=None,
                   help='Folder of the stage-1 (knowledge) checkpoints. Default: '
                        '$KUDA_MMSA_KNOWLEDGE_DIR, else ~/MMSA/knowledge')
    g.add_argument('--pretrained', type=str, default=None,
                   help='Text encoder (HF name or local BERT folder; "demo-tiny-bert" = the '
                        'local demo BERT), overriding the config')
    g.add_argument('--no-plots', action='store_true',
                   help='Do not write the training-curve PNG next to the log')
    return p


def _prog() -> str:
    from . import hook

    if hook.VIA_HOOK:
        return "python -m MMSA"
    return "python -m kuda_mmsa"


def main(argv=None) -> int:
    parser = build_parser(prog=_prog())
    a = parser.parse_args(argv)
    try:
        from . import config as cfg

        cfg.configure(data_root=a.data_root, knowledge_dir=a.knowledge_dir,
                      pretrained=a.pretrained, plots=False if a.no_plots else None)
        from .register import register

        register()
        import MMSA.run

        MMSA.run.MMSA_run(
            model_name=a.model,
            dataset_name=canonical_name(a.dataset),
            config_file=a.config or None,
            seeds=a.seeds,
            is_tune=a.tune,
            tune_times=a.tune_times,
            custom_feature=a.feature_file or None,
            feature_T=a.feature_T,
            feature_A=a.feature_A,
            feature_V=a.feature_V,
            model_save_dir=a.model_save_dir or None,
            res_save_dir=a.res_save_dir or None,
            log_dir=a.log_dir or None,
            gpu_ids=a.gpu_ids,
            num_workers=a.num_workers,
            verbose_level=a.verbose,
        )
    except KudaInputError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
