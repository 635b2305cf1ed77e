"""Trainer callbacks that keep a long run from silently going wrong."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

# sysexits' EX_TEMPFAIL ("try again later"): the run saved a checkpoint on a signal and stopped; the same
# command with `--resume_from_checkpoint auto` continues it. recipes/launch.slurm requeues the job on it.
SAVED_ON_SIGNAL_EXIT_CODE = 75


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


class SaveOnSignal(TrainerCallback):
    """Saves a full checkpoint and stops training at the end of the optimizer step during which one of
    `signals` arrived (a scheduler's pre-emption or time-limit warning).

    The handler only notes the signal; at each step's end the processes take the largest of their notes (one
    4-byte all-reduce), so all of them stop after the same step even if the signal reached only some, and the
    Trainer then writes its ordinary checkpoint (weights, optimizer, scheduler, RNG states, data position).
    Later signals are ignored: a second SIGTERM cannot cut the save short. Handlers are installed when training
    starts and put back when it ends without a signal; after a save on a signal the process ignores them until
    it exits with `SAVED_ON_SIGNAL_EXIT_CODE`.
    """

    def __init__(self, signals: Sequence[str]) -> None:
        self.signals = [signal.Signals[name] for name in signals]
        self.received: signal.Signals | None = None
        self.received_at = 0.0  # time.monotonic() of the first signal
        self.ignored = 0  # signals after the first
        self.saved_step: int | None = None  # the step saved because of the signal
        self._previous: dict[signal.Signals, Any] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of the main thread: no logging (its locks), no I/O.
        if self.received is None:
            self.received, self.received_at = signal.Signals(signum), time.monotonic()
        else:
            self.ignored += 1

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.received, self.ignored, self.saved_step = None, 0, None
        if threading.current_thread() is not threading.main_thread():
            logger.warning("training runs outside the main thread: no checkpoint will be saved on a signal")
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._note)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._agreed(args):
            self.saved_step = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # The Trainer ends the epoch it stopped in: with save/eval_strategy "epoch" it would evaluate now (a
        # result the uninterrupted run never logs) and write the saved checkpoint again, in place.
        if self.saved_step is not None:
            control.should_save = control.should_evaluate = False

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.release()

    def release(self) -> None:
        """Put the signal handlers back (also after an exception, which skips on_train_end)."""
        for sig, handler in self._previous.items():
            # After a save on a signal the process exits on its own; ignoring (not merely noting) later signals
            # also covers interpreter shutdown, where Python puts its handlers back to the default (terminate).
            signal.signal(sig, handler if self.saved_step is None else signal.SIG_IGN)
        self._previous.clear()

    def _agreed(self, args: TrainingArguments) -> bool:
        """Whether any process got a signal; the same answer in every process of the run."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.received is not None
        flag = torch.tensor(int(self.received is not None), dtype=torch.int32, device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stop = bool(flag.item())
        if stop and self.received is None:  # another process got it: stop with it
            self.received_at = time.monotonic()
        return stop

    def summary(self, checkpoint: str) -> str:
        """The one line a run that stopped on a signal logs before it exits."""
        name = self.received.name if self.received is not None else "a signal to another process"
        ignored = f"; {self.ignored} later signal(s) ignored" if self.ignored else ""
        return (
            f"{name}: saved {checkpoint} at step {self.saved_step}, {time.monotonic() - self.received_at:.1f} s "
            f"after the signal{ignored}; exiting with code {SAVED_ON_SIGNAL_EXIT_CODE}. The same command with "
            "--resume_from_checkpoint auto continues the run"
        )
