"""Stage 2: the KuDA trainer in MMSA's trainer protocol (do_train / do_test).

Loads the stage-1 knowledge (running stage 1 first when it is missing), freezes adapters and
decoders, trains with MSE + ce_weight * CE, AdamW, linear warm-up then cosine decay, gradient
clipping; selects the epoch on the validation set by MMSA's KeyEval and stops early. After
every epoch the full training state is written atomically, so an interrupted run resumes.
"""
import logging
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checkpoints import atomic_save, cpu_state_dict, load_knowledge_into, read_checkpoint
from ..optim import autocast, make_adamw, warmup_cosine
from ..pretrain import ensure_knowledge, pretrain_command

logger = logging.getLogger("MMSA")


def _inputs(batch, device):
    return dict(
        text=batch["text"].to(device),
        audio=batch["audio"].to(device),
        vision=batch["vision"].to(device),
        audio_lengths=torch.as_tensor(batch["audio_lengths"]).to(device) if "audio_lengths" in batch else None,
        vision_lengths=torch.as_tensor(batch["vision_lengths"]).to(device) if "vision_lengths" in batch else None,
    )


class KuDATrainer:
    def __init__(self, args):
        from MMSA.utils import MetricsTop

        self.args = args
        self.metrics = MetricsTop("regression").getMetics(args.get("metrics_name") or args["dataset_name"])
        self.criterion = nn.MSELoss()
        self.ce_weight = float(args.get("ce_weight", 0.1))
        self.precision = args.get("precision", "fp32")
        self.history = []

    # ------------------------------------------------------------------ helpers
    def _kuda(self, model):
        return getattr(model, "Model", model)

    def _resume_path(self) -> Path:
        return Path(str(self.args["model_save_path"]) + ".resume")

    def load_knowledge(self, model) -> None:
        kuda = self._kuda(model)
        if not self.args.get("use_knowledge", True):
            logger.info("use_knowledge is off: adapters and decoders start from random weights and train.")
            return
        paths = ensure_knowledge(self.args, progress=self.args.get("progress", True))
        for m, path in paths.items():
            load_knowledge_into(kuda.branches[m], path, m, pretrain_command(self.args))
        if self.args.get("freeze_knowledge", True):
            kuda.freeze_knowledge()
        logger.info(f"Loaded stage-1 knowledge from {paths['T'].parent}")

    # ------------------------------------------------------------------ train
    def do_train(self, model, dataloader, return_epoch_results=False):
        args = self.args
        device = args["device"]
        self.load_knowledge(model)
        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_adamw(params, lr=float(args["learning_rate"]), weight_decay=float(args["weight_decay"]))
        max_epochs = int(args.get("epochs", 50))
        total_steps = max_epochs * max(len(dataloader["train"]), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, float(args.get("warmup_ratio", 0.1))))
        key = args["KeyEval"]
        minimize = key in ("Loss", "MAE")
        best_valid = float("inf") if minimize else -float("inf")
        epoch, best_epoch = 0, 0
        epoch_results = {"train": [], "valid": [], "test": []}

        # The loader may shuffle with its own generator: its state is part of "where we are".
        shuffle_gen = getattr(dataloader["train"], "generator", None)
        resume = self._resume_path()
        if resume.exists():
            state = read_checkpoint(resume, "Interrupted training state")
            if state.get("cur_seed") == args.get("cur_seed") and state.get("model_name") == args["model_name"]:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                epoch, best_epoch, best_valid = state["epoch"], state["best_epoch"], state["best_valid"]
                self.history = state.get("history", [])
                torch.set_rng_state(state["rng"])
                if shuffle_gen is not None and state.get("shuffle_rng") is not None:
                    shuffle_gen.set_state(state["shuffle_rng"])
                logger.info(f"Resuming stage 2 after epoch {epoch} from {resume}")

        clip = float(args.get("grad_clip", 0) or 0)
        while epoch < max_epochs:
            epoch += 1
            model.train()
            y_pred, y_true, total_loss, total_ce, n = [], [], 0.0, 0.0, 0
            with tqdm(dataloader["train"], desc=f"kuda epoch {epoch}/{max_epochs}", leave=False,
                      disable=not args.get("progress", True)) as bar:
                for batch in bar:
                    labels = batch["labels"]["M"].to(device).view(-1, 1)
                    with autocast(device, self.precision):
                        out = model(**_inputs(batch, device), labels=labels)
                    out = {k: v.float() for k, v in out.items()}
                    loss = self.criterion(out["M"], labels) + self.ce_weight * out["ce"]
                    if "aux" in out:  # the label-free ratio estimator's own loss
                        loss = loss + out["aux"]
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if clip > 0:
                        nn.utils.clip_grad_norm_(params, clip)
                    optimizer.step()
                    scheduler.step()
                    total_loss += loss.item() * labels.shape[0]
                    total_ce += out["ce"].item() * labels.shape[0]
                    n += labels.shape[0]
                    y_pred.append(out["M"].detach().cpu())
                    y_true.append(labels.cpu())
                    bar.set_postfix(loss=f"{total_loss / n:.4f}")
            train_results = self.metrics(torch.cat(y_pred), torch.cat(y_true))
            train_results["Loss"] = round(total_loss / max(n, 1), 4)
            logger.info(f"TRAIN-(kuda) [{epoch - best_epoch}/{epoch}/{args.get('cur_seed', 1)}] >> "
                        f"loss: {total_loss / max(n, 1):.4f} ce: {total_ce / max(n, 1):.4f} "
                        + " ".join(f"{k}: {v:.4f}" for k, v in train_results.items() if k != "Loss"))
            val_results = self.do_test(model, dataloader["valid"], mode="VAL")
            cur = val_results[key]
            better = cur <= best_valid - 1e-6 if minimize else cur >= best_valid + 1e-6
            if better:
                best_valid, best_epoch = cur, epoch
                atomic_save(cpu_state_dict(model), args["model_save_path"])
            self.history.append({"epoch": epoch, "train_loss": train_results["Loss"], "valid": dict(val_results)})
            if return_epoch_results:
                epoch_results["train"].append(train_results)
                epoch_results["valid"].append(val_results)
                epoch_results["test"].append(self.do_test(model, dataloader["test"], mode="TEST"))
            stop = epoch - best_epoch >= int(args.get("early_stop", 10))
            atomic_save({"model": cpu_state_dict(model), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch, "best_epoch": best_epoch,
                         "best_valid": best_valid, "history": self.history, "rng": torch.get_rng_state(),
                         "shuffle_rng": None if shuffle_gen is None else shuffle_gen.get_state(),
                         "cur_seed": args.get("cur_seed"), "model_name": args["model_name"]}, resume)
            if stop:
                logger.info(f"Early stop: no {key} improvement on the validation set for {epoch - best_epoch} epochs.")
                break
        resume.unlink(missing_ok=True)
        logger.info(f"Best validation {key} {best_valid:.4f} at epoch {best_epoch}; weights in {args['model_save_path']}")
        if args.get("plots", True):
            self.save_curves(key)
        return epoch_results if return_epoch_results else None

    def save_curves(self, key):
        """Training curves PNG next to MMSA's log (never fails the run)."""
        from .. import plots

        args = self.args
        folder = Path(args.get("log_dir") or Path(str(args["model_save_path"])).parent)
        path = folder / f"{args['model_name']}-{args['dataset_name']}-seed{torch.initial_seed()}-curves.png"
        try:
            if plots.save_training_curves(self.history, path, key) is not None:
                logger.info(f"Training curves: {path}")
        except Exception as e:
            logger.warning(f"Training curves not written: {e}")

    # ------------------------------------------------------------------ test
    def do_test(self, model, dataloader, mode="VAL", return_sample_results=False):
        device = self.args["device"]
        model.eval()
        y_pred, y_true, loss_sum, n = [], [], 0.0, 0
        samples = {"Ids": [], "SResults": [], "Ratios": [], "Unimodal": [], "Labels": []}
        with torch.no_grad():
            for batch in dataloader:
                labels = batch["labels"]["M"].to(device).view(-1, 1)
                with autocast(device, self.precision):
                    out = model(**_inputs(batch, device))
                out = {k: v.float() for k, v in out.items()}
                loss_sum += float(self.criterion(out["M"], labels)) * labels.shape[0]
                n += labels.shape[0]
                y_pred.append(out["M"].cpu())
                y_true.append(labels.cpu())
                if return_sample_results:
                    samples["Ids"].extend(list(batch["id"]))
                    samples["SResults"].extend(out["M"].view(-1).cpu().tolist())
                    samples["Ratios"].extend(out["ratio"].cpu().tolist())
                    samples["Unimodal"].extend(torch.cat([out[m] for m in "TVA"], -1).cpu().tolist())
                    samples["Labels"].extend(labels.view(-1).cpu().tolist())
        results = self.metrics(torch.cat(y_pred), torch.cat(y_true))
        results["Loss"] = round(loss_sum / max(n, 1), 4)
        logger.info(f"{mode}-(kuda) >> " + " ".join(f"{k}: {v:.4f}" for k, v in results.items()))
        if return_sample_results:
            results.update(samples)
        return results
