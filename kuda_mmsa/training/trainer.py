"""Stage 2: the KuDA trainer in MMSA's trainer protocol (do_train / do_test).

Loads the stage-1 knowledge (running stage 1 first when it is missing), freezes adapters and
decoders, trains with MSE + ce_weight * CE, AdamW, linear warm-up then cosine decay, gradient
clipping; selects the epoch on the validation set by MMSA's KeyEval and stops early.

Nothing is silently wrong: weights left at the save path by an earlier run are removed before
a fresh start, so testing always uses this run's best epoch; a resume state is applied only
when its fingerprint (the full effective config, the data, the stage-1 knowledge, the seed and
the package version) equals this run's; the first non-finite loss stops training with the
epoch named, keeping the best checkpoint. After every epoch the full training state is
written atomically, so an interrupted run resumes bit for bit.

Data-parallel runs (torchrun; kuda_mmsa.training.distributed): the model is wrapped in
DistributedDataParallel, each rank's loss is scaled by its share of the global batch,
validation and test metrics are computed on the whole split gathered from every rank, and
rank 0 alone writes weights, sidecar, resume state and plots (the resume state keeps every
rank's random state). Stage 1, when it has to run, runs on rank 0 while the others wait.
``epoch_callbacks`` (fn(epoch, validation results)) run after every epoch; one may raise to
stop the run (a pruned tuning trial).
"""
import json
import logging
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm  # not tqdm.auto: its asyncio flavour calls iter() in __init__, an extra
                       # DataLoader iterator that draws from the shuffle generator (and, with
                       # workers, prefetches), so results changed with -n

from .. import __version__, plots
from ..errors import KudaTrainingError
from ..files import atomic_write_text, remove_stale_temps
from . import distributed
from .checkpoints import (RESUME_FORMAT, atomic_save, cpu_state_dict, load_knowledge_into, plain, read_resume,
                          weights_info_path)
from .evaluation import batch_inputs, eval_forward
from .metrics import lower_is_better, metrics_for
from .optim import load_optimizer_state, make_adamw, make_schedule
from .precision import autocast, choose, detect
from .run_config import RunConfig
from .stage1 import check_text_data, data_label, ensure_knowledge, job_for_run
from .step import TrainStep, graphs_wanted
from .transfer import freeze_knowledge, knowledge_modalities, load_cross_dataset_knowledge

logger = logging.getLogger("MMSA")


def curves_path(run: RunConfig) -> Path:
    """Where a run's training-curve PNG goes: next to MMSA's log, one per seed."""
    folder = Path(run.log_dir or Path(str(run.model_save_path)).parent)
    return folder / f"{run.model_name}-{run.dataset_name}-seed{run.seed}-curves.png"


class KuDATrainer:
    """MMSA's trainer protocol; ``run``: the RunConfig, or MMSA's args (read once, here)."""

    def __init__(self, run):
        self.run = run = RunConfig.from_args(run)
        self.metrics = metrics_for(run.metrics_name or "SIMS")
        self.criterion = nn.MSELoss()
        self.ce_weight = float(run.train.ce_weight)
        self.precision, why = choose(run.train.precision, detect(run.device))
        logger.info(f"Precision {self.precision} ({why}).")
        self.history = []
        self.knowledge = {}
        self.dist = distributed.current()
        self.epoch_callbacks = []   # fn(epoch, valid_results) after every epoch; may raise to stop
        self._eval, self._eval_for = None, None     # the evaluation forward and its model

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _kuda(model):
        return getattr(model, "Model", model)

    def _resume_path(self) -> Path:
        return Path(str(self.run.model_save_path) + ".resume")

    def fingerprint(self) -> dict:
        """Everything that defines this run's result (compared before resuming)."""
        run = self.run
        return plain({
            "version": __version__, "model": run.model_name, "dataset": run.dataset_name,
            "seed": run.seed, "config": run.result_config(),
            "KeyEval": run.train.KeyEval, "precision": self.precision,
            "data": run.data_fingerprint, "knowledge": self.knowledge,
            "world_size": run.world_size,
        })

    def load_knowledge(self, model, datasets=None) -> None:
        """Stage-1 adapters and decoders into the model (stage 1 runs first when they are
        missing and auto_pretrain is on), then frozen. In a data-parallel run rank 0 alone
        does it (the others wait, then receive the weights from rank 0 with the model)."""
        kuda = self._kuda(model)
        run = self.run
        # token ids made by another tokenizer than the text encoder's are refused before training
        check_text_data(datasets, run.model.pretrained, f"the feature file '{data_label(run)}'")
        if not run.model.use_knowledge:
            logger.info("use_knowledge is off: adapters and decoders start from random weights and train.")
            return
        job = job_for_run(run, device=run.device)

        def prepare():
            if run.cross_dataset:      # knowledge_from another dataset: training/transfer.py
                return load_cross_dataset_knowledge(kuda, run, datasets, device=run.device)[:2]
            # Parallel sweep cells share the knowledge folder: one of them runs stage 1.
            with distributed.file_lock(job.paths["T"].parent):
                paths = ensure_knowledge(job, datasets, auto_pretrain=bool(run.train.auto_pretrain),
                                         allow_other_data=bool(run.train.knowledge_from))
            uids = {}
            for m, path in paths.items():
                ckpt = load_knowledge_into(kuda.branches[m], path, m, job.command)
                uids[m] = ckpt["meta"].get("uid")
            return str(paths["T"].parent), uids

        if self.dist.distributed:
            logger.info(f"Data-parallel run ({self.dist.world_size} processes): the stage-1 knowledge is "
                        f"prepared on rank 0 only (stage 1 runs there if it is missing) while the other "
                        f"ranks wait; they receive its weights from rank 0.")
            folder, self.knowledge = self.dist.on_main(prepare)
        else:
            folder, self.knowledge = prepare()
        if run.train.freeze_knowledge:
            freeze_knowledge(kuda, knowledge_modalities(run))
        logger.info(f"Loaded stage-1 knowledge from {folder}")

    # ------------------------------------------------------------------ train
    def do_train(self, model, dataloader, return_epoch_results=False):
        run, train = self.run, self.run.train
        ctx = self.dist
        device = run.device
        save_path = Path(str(run.model_save_path))
        self.load_knowledge(model, {s: dl.dataset for s, dl in dataloader.items()})
        model.to(device)
        net = model
        if ctx.distributed:
            ctx.sync_module(model)      # rank 0's initialisation and knowledge on every rank
            net = distributed.wrap(model, device)
        params = [p for p in model.parameters() if p.requires_grad]
        graphs, why = graphs_wanted(train.cuda_graphs, device, ctx.distributed)
        logger.info(f"Training steps {'captured in a CUDA graph' if graphs else 'eager'} ({why}).")
        optimizer = make_adamw(params, lr=float(train.learning_rate), weight_decay=float(train.weight_decay),
                               capturable=graphs)
        max_epochs = int(train.epochs)
        train_loader = dataloader["train"]
        total_steps = max_epochs * max(len(train_loader), 1)
        scheduler = make_schedule(optimizer, total_steps, float(train.warmup_ratio))
        kuda = self._kuda(model)
        train_step = TrainStep(self._forward_loss(net), params, optimizer, float(train.grad_clip or 0), device,
                               graphs=graphs, blockers=kuda.capture_blockers(), check=kuda.check_inputs)
        key = train.KeyEval
        minimize = lower_is_better(key)
        best_valid = float("inf") if minimize else -float("inf")
        epoch, best_epoch = 0, 0
        epoch_results = {"train": [], "valid": [], "test": []}
        shuffle_gen = train_loader.generator

        resume = self._resume_path()
        fingerprint = self.fingerprint()

        def read_state():
            for p in (save_path, resume):
                remove_stale_temps(p)
            state, note = read_resume(resume, RESUME_FORMAT, fingerprint, "Interrupted training state",
                                      refuse=not run.is_tune)
            if state is None:
                # Weights at the save path from an earlier run must never be tested as this run's.
                save_path.unlink(missing_ok=True)
                weights_info_path(save_path).unlink(missing_ok=True)
            elif ctx.distributed:       # the weights travel by broadcast, the rest as an object
                model.load_state_dict(state.pop("model"))
            return state, note

        state, note = ctx.on_main(read_state) if ctx.distributed else read_state()
        if note:
            logger.warning(note)
        if state is not None:
            if ctx.distributed:
                ctx.sync_module(model)
            else:
                model.load_state_dict(state["model"])
            load_optimizer_state(optimizer, state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            epoch, best_epoch, best_valid = int(state["epoch"]), int(state["best_epoch"]), float(state["best_valid"])
            self.history = list(state["history"])
            rngs = state.get("rng_ranks")
            torch.set_rng_state(rngs[ctx.rank] if rngs and len(rngs) == ctx.world_size else state["rng"])
            shuffle_gen.set_state(state["shuffle_rng"])
            logger.info(f"Resuming stage 2 after epoch {epoch} from {resume}")
        else:
            distributed.seed_rank(ctx, int(run.seed or 0))

        progress = bool(run.places.progress) and ctx.is_main
        stop = epoch > 0 and epoch - best_epoch >= int(train.early_stop)
        while epoch < max_epochs and not stop:
            epoch += 1
            net.train()
            y_pred, y_true = [], []
            total_loss = torch.zeros((), device=device)
            total_ce = torch.zeros((), device=device)
            n = 0
            with tqdm(train_loader, desc=f"kuda epoch {epoch}/{max_epochs}", leave=False,
                      disable=not progress) as bar:
                for step, batch in enumerate(bar):
                    inputs = batch_inputs(batch)       # on the host: the step moves them
                    labels = inputs["labels"] = batch["labels"]["M"].view(-1, 1)
                    b = labels.shape[0]
                    report = train_step(inputs, distributed.loss_scale(ctx, train_loader, step, b))
                    scheduler.step()
                    # kept on the device: reading a value back each step would stall the GPU
                    total_loss += report["loss"] * b
                    total_ce += report["ce"] * b
                    n += b
                    y_pred.append(report["M"])
                    y_true.append(labels)
                    if progress and step % 10 == 0:
                        bar.set_postfix(loss=f"{total_loss.item() / n:.4f}")
            sum_loss, sum_ce = total_loss.item(), total_ce.item()
            y_pred, y_true = torch.cat(y_pred).cpu(), torch.cat(y_true)
            if ctx.distributed:   # the epoch's loss and train metrics over every rank's share
                sum_loss, sum_ce, n = ctx.all_reduce_sum([sum_loss, sum_ce, n])
                shares = ctx.all_gather((y_pred, y_true))
                y_pred, y_true = torch.cat([p for p, _ in shares]), torch.cat([t for _, t in shares])
            mean_loss = sum_loss / max(n, 1)
            if not torch.isfinite(torch.tensor(mean_loss)):
                where = (f"the best checkpoint (epoch {best_epoch}, valid {key} {best_valid:.4f}) is kept at "
                         f"{save_path}" if best_epoch else "no checkpoint was saved")
                # the state after every finished epoch is saved, so there is one from epoch 2 on
                state_note = (f"the state after epoch {epoch - 1} is in {resume}" if epoch > 1
                              else "it diverged in its first epoch, so no training state was saved")
                then = f"then delete {resume} and run again" if epoch > 1 else "then run again"
                raise KudaTrainingError(
                    f"Training diverged: the loss became non-finite ({mean_loss}) in epoch {epoch} of seed "
                    f"{run.seed}; {where}, and {state_note}. "
                    f"Lower learning_rate (now {train.learning_rate}) or set grad_clip, {then}.")
            train_results = self.metrics(y_pred, y_true)
            train_results["Loss"] = round(mean_loss, 4)
            logger.info(f"TRAIN-(kuda) [{epoch - best_epoch}/{epoch}/{run.cur_seed}] >> "
                        f"loss: {mean_loss:.4f} ce: {sum_ce / max(n, 1):.4f} "
                        + " ".join(f"{k}: {v:.4f}" for k, v in train_results.items() if k != "Loss"))
            val_results = self.do_test(model, dataloader["valid"], mode="VAL")
            cur = val_results[key]
            better = cur <= best_valid - 1e-6 if minimize else cur >= best_valid + 1e-6
            if better:
                best_valid, best_epoch = cur, epoch
                if ctx.is_main:
                    atomic_save(cpu_state_dict(model), save_path)
                    self.write_sidecar(save_path, epoch, best_valid)
            self.history.append(plain({"epoch": epoch, "train_loss": train_results["Loss"], "valid": val_results}))
            if return_epoch_results:
                epoch_results["train"].append(train_results)
                epoch_results["valid"].append(val_results)
                epoch_results["test"].append(self.do_test(model, dataloader["test"], mode="TEST"))
            stop = epoch - best_epoch >= int(train.early_stop)
            rngs = ctx.all_gather(torch.get_rng_state()) if ctx.distributed else None
            if ctx.is_main:
                state = {"format": RESUME_FORMAT, "fingerprint": fingerprint, "model": cpu_state_dict(model),
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "epoch": epoch, "best_epoch": best_epoch, "best_valid": float(best_valid),
                         "history": self.history, "rng": torch.get_rng_state(),
                         "shuffle_rng": shuffle_gen.get_state()}
                if rngs is not None:
                    state["rng_ranks"] = rngs      # each rank's dropout stream, for an exact resume
                atomic_save(state, resume)
            for callback in self.epoch_callbacks:
                callback(epoch, val_results)
            if stop:
                logger.info(f"Early stop: no {key} improvement on the validation set for {epoch - best_epoch} epochs.")

        def finish():
            if not best_epoch or not save_path.is_file():
                raise KudaTrainingError(
                    f"No epoch gave a finite validation {key}, so no weights were saved at {save_path}; "
                    f"nothing can be tested. Check the data and the learning rate.")
            resume.unlink(missing_ok=True)
            logger.info(f"Best validation {key} {best_valid:.4f} at epoch {best_epoch}; weights in {save_path}")
            if run.places.plots:
                self.save_curves(key)

        ctx.on_main(finish) if ctx.distributed else finish()
        return epoch_results if return_epoch_results else None

    def _forward_loss(self, net):
        """The step's forward and loss: MSE + ce_weight * CE (+ the ratio's auxiliary loss)."""
        device, precision = self.run.device, self.precision

        def forward_loss(x):
            labels = x["labels"]
            with autocast(device, precision):
                out = net(**{k: v for k, v in x.items() if k != "labels"}, labels=labels)
            out = {k: v.float() for k, v in out.items()}
            loss = self.criterion(out["M"], labels) + self.ce_weight * out["ce"]
            if "aux" in out:  # the label-free ratio estimator's own loss
                loss = loss + out["aux"]
            return loss, {"loss": loss.detach(), "ce": out["ce"].detach(), "M": out["M"].detach()}

        return forward_loss

    def write_sidecar(self, save_path: Path, epoch: int, valid: float) -> None:
        """``<weights>.json``: the configuration and data the weights were trained with, so that
        explain / evaluate / robustness rebuild exactly this model."""
        run = self.run
        info = {"format": "kuda_mmsa.weights-info/1", "version": __version__, "model": run.model_name,
                "dataset": run.dataset_name, "seed": run.seed, "epoch": epoch, "valid": {run.train.KeyEval: valid},
                "config": run.result_config(), "pretrained": run.model.pretrained,
                "feature_file": run.feature_file, "data": run.data_fingerprint}
        atomic_write_text(weights_info_path(save_path), json.dumps(plain(info), indent=1))

    def save_curves(self, key):
        """Training curves PNG next to MMSA's log (never fails the run)."""
        path = curves_path(self.run)
        try:
            if plots.save_training_curves(self.history, path, key) is not None:
                logger.info(f"Training curves: {path}")
        except Exception as e:
            logger.warning(f"Training curves not written: {e}")

    # ------------------------------------------------------------------ test
    def _eval_forward(self, model):
        """One evaluation forward per model, kept across epochs (its CUDA graph, if any, stays
        valid: the optimiser updates the weights in place)."""
        model = distributed.unwrap(model)
        if self._eval_for is not model:
            graphs, _ = graphs_wanted(self.run.train.cuda_graphs, self.run.device)
            self._eval, self._eval_for = eval_forward(model, self.run.device, self.precision, graphs), model
        return self._eval

    def do_test(self, model, dataloader, mode="VAL", return_sample_results=False):
        p = distributed.predict_split(self.dist, model, dataloader, self.run.device, self.precision,
                                      forward=self._eval_forward(model))
        results = self.metrics(p.pred, p.labels)
        results["Loss"] = round(float(self.criterion(p.pred, p.labels)), 4)
        logger.info(f"{mode}-(kuda) >> " + " ".join(f"{k}: {v:.4f}" for k, v in results.items()))
        if return_sample_results:
            results.update({"Ids": p.ids, "SResults": p.pred.view(-1).tolist(), "Ratios": p.ratio.tolist(),
                            "Unimodal": p.unimodal.tolist(), "Labels": p.labels.view(-1).tolist()})
        return results
