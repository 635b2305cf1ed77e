"""Trainer callbacks that keep a long run from silently going wrong."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)


class NonFiniteLossGuard(TrainerCallback):
    """Stops training on a non-finite training loss instead of training on NaNs.

    The Trainer's default (`logging_nan_inf_filter`) only hides NaN losses from the logs while the optimizer
    applies their NaN gradients, so every later checkpoint holds NaN weights. Here a forward hook flags each
    non-finite training loss; the optimizer step of a flagged step is dropped (gradients set to None, so
    weights and optimizer moments stay untouched; under fp16 the GradScaler already skips it). After more than
    `patience` consecutive flagged steps training stops, no checkpoint is written for them, and `failure`
    names the step. Under DeepSpeed the engine steps inside `backward`, before any callback can drop the
    update, so there the guard stops at the first flagged step whatever `patience` says.
    """

    def __init__(self, patience: int = 0) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.patience = patience
        self.failure: str | None = None
        self._flag: torch.Tensor | None = None  # 1 if a loss since the last optimizer step was not finite
        self._consecutive = 0
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    def _observe(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        loss = getattr(output, "loss", None)
        if not module.training or loss is None:
            return
        # Stays on the device: no host sync per micro-batch, one per optimizer step below.
        bad = (~torch.isfinite(loss.detach())).any().to(torch.int32)
        self._flag = bad if self._flag is None else torch.maximum(self._flag, bad)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.failure = None
        self._consecutive = 0
        self._hook = kwargs["model"].register_forward_hook(self._observe)

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        flag, self._flag = self._flag, None
        if flag is None:  # the model returned no loss (e.g. label smoothing computes it outside)
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every process must take the same decision, or the ones that stop leave the others hanging.
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if not flag.item():
            self._consecutive = 0
            return
        step = state.global_step + 1
        self._consecutive += 1
        deepspeed = getattr(args, "deepspeed_plugin", None) is not None
        if not deepspeed and not args.fp16:
            for param in kwargs["model"].parameters():
                param.grad = None  # the optimizer skips parameters without a gradient
        if deepspeed or self._consecutive > self.patience:
            self.failure = (
                f"the training loss was not finite at step {step} "
                f"({self._consecutive} step(s) in a row, nonfinite_loss_patience={self.patience}); "
                "training stopped without saving those steps"
            )
            control.should_training_stop = True
        else:
            logger.warning(
                "step %d: training loss is not finite; update skipped (%d of %d tolerated in a row)",
                step,
                self._consecutive,
                self.patience,
            )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._veto_save(control)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._veto_save(control)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _veto_save(self, control: TrainerControl) -> None:
        # Runs after DefaultFlowCallback: the last checkpoint on disk stays the last good one.
        if self.failure is not None:
            control.should_save = False
            control.should_evaluate = False
