"""`ModelArguments`: which Florence-2 checkpoint to load and which of its parameters to train."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from florence_recipes.configs.choices import ATTN_IMPLEMENTATIONS, TORCH_DTYPES, TRAINING_MODES, check_choice


@dataclass
class ModelArguments:
    """Which Florence-2 checkpoint to load and which of its parameters to train."""

    model_name_or_path: str = field(
        default="florence-community/Florence-2-base",
        metadata={
            "help": "Hub id (e.g. florence-community/Florence-2-large) or local folder of a native Florence-2."
        },
    )
    model_revision: str = field(
        default="main", metadata={"help": "Branch, tag or commit of the Hub checkpoint."}
    )
    torch_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype the weights are loaded in. Keep float32 master weights with `bf16: true` mixed precision; "
            "`bfloat16` loads bf16 weights (less memory, pure-bf16 training).",
            "choices": TORCH_DTYPES,
        },
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": "Attention kernel: sdpa works everywhere; flash_attention_2 needs `pip install -e .[flash-attn]`.",
            "choices": ATTN_IMPLEMENTATIONS,
        },
    )
    training_mode: str = field(
        default="full",
        metadata={
            "help": "full: train everything; frozen_vision: freeze the DaViT vision tower and its projector; "
            "lora: LoRA adapters on the language model, everything else frozen.",
            "choices": TRAINING_MODES,
        },
    )
    lora_r: int | None = field(default=None, metadata={"help": "LoRA rank (lora mode only; default 16)."})
    lora_alpha: int | None = field(
        default=None, metadata={"help": "LoRA alpha (lora mode only; default 2 * r)."}
    )
    lora_dropout: float | None = field(
        default=None, metadata={"help": "LoRA dropout (lora mode only; default 0.05)."}
    )
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Linear layers of the language model that get adapters (lora mode only; default: "
            "q_proj k_proj v_proj out_proj fc1 fc2)."
        },
    )
    merge_lora: bool | None = field(
        default=None,
        metadata={
            "help": "lora mode only: save the adapters merged into a plain Florence-2 checkpoint (true) or "
            "as a PEFT adapter folder (false, the default)."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Never needed for native Florence-2 checkpoints; only for custom code you have reviewed."
        },
    )
    allow_pickled_weights: bool = field(
        default=False,
        metadata={
            "help": "Also load PyTorch .bin weights (unpickled, which can run code) when a checkpoint has no "
            ".safetensors; only for checkpoints you trust."
        },
    )

    def __post_init__(self) -> None:
        check_choice("torch_dtype", self.torch_dtype, TORCH_DTYPES)
        check_choice("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        check_choice("training_mode", self.training_mode, TRAINING_MODES)
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ValueError(
                "attn_implementation=flash_attention_2 needs flash-attn: pip install -e .[flash-attn]"
            )
        lora_options = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "merge_lora")
        if self.training_mode != "lora":
            given = [name for name in lora_options if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)}: valid only with training_mode=lora (got {self.training_mode})"
                )
            return
        self.lora_r = 16 if self.lora_r is None else self.lora_r
        self.lora_alpha = 2 * self.lora_r if self.lora_alpha is None else self.lora_alpha
        self.lora_dropout = 0.05 if self.lora_dropout is None else self.lora_dropout
        self.lora_target_modules = self.lora_target_modules or [
            "q_proj",
            "k_proj",
            "v_proj",
            "out_proj",
            "fc1",
            "fc2",
        ]
        self.merge_lora = bool(self.merge_lora)
        if self.lora_r <= 0:
            raise ValueError(f"lora_r must be positive, got {self.lora_r}")
