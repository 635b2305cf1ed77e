"""Checks for the `accelerate launch --config_file accelerate_configs/*.yaml` files.

Every file goes through accelerate's own loader and the same argument/env plumbing `accelerate launch` uses;
DeepSpeed files are then resolved into the final DeepSpeed config the way `transformers.Trainer` does it
(launcher env -> `DeepSpeedPlugin` -> `HfTrainerDeepSpeedConfig.trainer_config_process/finalize`), and FSDP's
auto-wrap policy is applied to a tiny native `Florence2ForConditionalGeneration`. Nothing here needs a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import (
    DeepSpeedPlugin,
    DistributedType,
    FullyShardedDataParallelPlugin,
    prepare_deepspeed_cmd_env,
    prepare_multi_gpu_env,
)
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from transformers import (
    BartConfig,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2VisionConfig,
    Seq2SeqTrainingArguments,
)
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "accelerate_configs"

# file -> (distributed_type, zero stage, (optimizer offload, param offload))
EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, None, None),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, None, None),
    "multi_node.yaml": (DistributedType.MULTI_GPU, None, None),
    "deepspeed_zero1.yaml": (DistributedType.DEEPSPEED, 1, ("none", "none")),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 2, ("none", "none")),
    "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 3, ("none", "none")),
    "deepspeed_zero3_offload.yaml": (DistributedType.DEEPSPEED, 3, ("cpu", "cpu")),
    "fsdp.yaml": (DistributedType.FSDP, None, None),
}
ALL_CONFIGS = sorted(EXPECTED)
DEEPSPEED_CONFIGS = [name for name in ALL_CONFIGS if EXPECTED[name][0] == DistributedType.DEEPSPEED]
FLORENCE2_WRAP_CLASSES = {"BartEncoderLayer", "BartDecoderLayer", "Florence2VisionBlock"}

PER_DEVICE_BATCH = 2
GRAD_ACCUM = 3
LEARNING_RATE = 3e-5
NUM_TRAINING_STEPS = 10


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _launch_option_names() -> set[str]:
    """Every option `accelerate launch` understands (argparse dests)."""
    return set(vars(launch_command_parser().parse_args(["train.py"])))


def check_config(path: str | os.PathLike) -> ClusterConfig:
    """Load `path` with accelerate's loader and reject what that loader lets through silently.

    `load_config_from_file` already refuses unknown top-level keys, but keys inside `deepspeed_config` /
    `fsdp_config` are copied onto the launcher's argparse namespace without any check (a typo is silently
    ignored), and `zero_stage: 7` is happily passed on. Catch both here.
    """
    config = load_config_from_file(str(path))
    known = _launch_option_names()
    for section, prefix in (("deepspeed_config", ""), ("fsdp_config", "fsdp_")):
        for key in getattr(config, section):
            option = key if key.startswith(prefix) else prefix + key
            if option not in known:
                raise ValueError(f"{path}: unknown key {section}.{key} (not an `accelerate launch` option)")
    ds = config.deepspeed_config
    if config.distributed_type == DistributedType.DEEPSPEED:
        if ds.get("zero_stage") not in (0, 1, 2, 3):
            raise ValueError(f"{path}: deepspeed_config.zero_stage must be 0-3, got {ds.get('zero_stage')!r}")
        for key in ("offload_optimizer_device", "offload_param_device"):
            if ds.get(key, "none") not in ("none", "cpu", "nvme"):
                raise ValueError(f"{path}: deepspeed_config.{key} must be none|cpu|nvme, got {ds[key]!r}")
    elif ds:
        raise ValueError(f"{path}: deepspeed_config given but distributed_type is {config.distributed_type}")
    if config.distributed_type == DistributedType.FSDP and config.fsdp_config.get("fsdp_version") not in (
        1,
        2,
    ):
        raise ValueError(f"{path}: fsdp_config.fsdp_version must be 1 or 2")
    return config


def _launcher_args(config_path, *cli):
    """Parse + validate exactly as `accelerate launch --config_file <config_path> <cli> train.py` does."""
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(config_path), *cli, "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def _apply_launcher_env(monkeypatch, env: dict[str, str]) -> None:
    """Make this process look like a worker started by the launcher (only accelerate's own variables)."""
    prefixes = ("ACCELERATE_", "FSDP_")
    for key in list(os.environ):
        if key.startswith(prefixes):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(prefixes):
            monkeypatch.setenv(key, value)


def resolve_deepspeed_config(
    config_path, training_args, model, monkeypatch, *cli
) -> tuple[dict, DeepSpeedPlugin]:
    """The DeepSpeed config dict a Trainer run launched with `config_path` would hand to `deepspeed.initialize`."""
    args, defaults = _launcher_args(config_path, "--num_processes", "2", "--main_process_port", "0", *cli)
    assert args.use_deepspeed
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    _apply_launcher_env(monkeypatch, env)
    # TrainingArguments.__post_init__: DeepSpeedPlugin() from the env, mixed precision = bf16/fp16 flag or env.
    plugin = DeepSpeedPlugin()
    if training_args.bf16:
        mixed_precision = "bf16"
    elif training_args.fp16:
        mixed_precision = "fp16"
    else:
        mixed_precision = os.environ["ACCELERATE_MIXED_PRECISION"]
    plugin.set_mixed_precision(mixed_precision)
    # Trainer: propagate_args_to_deepspeed() then deepspeed_init() -> trainer_config_finalize().
    hf_config = HfTrainerDeepSpeedConfig(plugin.hf_ds_config.config)
    hf_config.trainer_config_process(training_args)
    hf_config.trainer_config_finalize(training_args, model, NUM_TRAINING_STEPS)
    return hf_config.config, plugin


def _write_variant(tmp_path, source: str, edit) -> Path:
    data = yaml.safe_load((CONFIG_DIR / source).read_text())
    edit(data)
    path = tmp_path / f"broken_{source}"
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------
def _make_training_args(output_dir, **overrides) -> Seq2SeqTrainingArguments:
    kwargs = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": PER_DEVICE_BATCH,
        "gradient_accumulation_steps": GRAD_ACCUM,
        "learning_rate": LEARNING_RATE,
        "bf16": True,
        # bf16 on a GPU-less runner is only accepted with use_cpu; it does not change the DeepSpeed config.
        "use_cpu": True,
        "report_to": [],
    }
    kwargs.update(overrides)
    return Seq2SeqTrainingArguments(**kwargs)


@pytest.fixture(scope="module")
def training_args(tmp_path_factory):
    # Built before any launcher env is applied, so it carries no DeepSpeed plugin of its own.
    return _make_training_args(tmp_path_factory.mktemp("out"))


@pytest.fixture(scope="module")
def tiny_florence2():
    vision = Florence2VisionConfig(
        embed_dim=[16, 32],
        num_heads=[1, 2],
        num_groups=[1, 2],
        depths=[1, 1],
        patch_size=[7, 3],
        patch_stride=[4, 2],
        patch_padding=[3, 1],
        patch_prenorm=[False, True],
        projection_dim=32,
        window_size=2,
    )
    text = BartConfig(
        vocab_size=100,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return Florence2ForConditionalGeneration(
        Florence2Config(vision_config=vision, text_config=text, image_token_id=99)
    )


# ---------------------------------------------------------------------------------------------------------------
# every file
# ---------------------------------------------------------------------------------------------------------------
def test_config_dir_has_exactly_the_documented_files():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == ALL_CONFIGS
    assert not [p.name for p in CONFIG_DIR.iterdir() if p.suffix != ".yaml"]


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_loads_with_accelerate_loader(name):
    path = CONFIG_DIR / name
    assert path.read_text().startswith("#"), "each config starts with a comment saying when to use it"
    config = check_config(path)
    distributed_type, _, _ = EXPECTED[name]
    assert isinstance(config, ClusterConfig)
    assert config.compute_environment.value == "LOCAL_MACHINE"
    assert config.distributed_type == distributed_type
    assert config.mixed_precision == "bf16"
    assert config.use_cpu is False
    assert config.machine_rank == 0
    assert config.main_training_function == "main"
    # No cluster details baked in: addresses and (except single_gpu) process counts come from the launcher.
    assert config.main_process_ip is None and config.main_process_port is None
    assert config.num_processes == (1 if name == "single_gpu.yaml" else -1)


@pytest.mark.parametrize("name", [n for n in ALL_CONFIGS if n != "single_gpu.yaml"])
def test_process_count_must_come_from_the_command_line(name):
    with pytest.raises(ValueError, match="--num_processes"):
        _launcher_args(CONFIG_DIR / name)


def test_single_node_ddp_topology():
    args, _ = _launcher_args(
        CONFIG_DIR / "multi_gpu.yaml", "--num_processes", "4", "--main_process_port", "0"
    )
    assert args.multi_gpu and not args.use_deepspeed and not args.use_fsdp
    prepare_multi_gpu_env(args)
    assert args.nproc_per_node == "4"
    assert not hasattr(args, "nnodes")


def test_multi_node_topology_comes_from_the_launcher():
    cli = ["--num_machines", "2", "--num_processes", "8", "--machine_rank", "1"]
    cli += ["--main_process_ip", "10.1.2.3", "--main_process_port", "29555"]
    args, _ = _launcher_args(CONFIG_DIR / "multi_node.yaml", *cli)
    assert args.multi_gpu
    prepare_multi_gpu_env(args)
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "4", 1)
    # (accelerate ignores the file's `same_network: true`, the CLI flag defaults to False, so torchrun gets a
    # static rendezvous endpoint instead of master_addr/master_port; both point at the launcher's values.)
    endpoint = getattr(args, "rdzv_endpoint", None) or f"{args.master_addr}:{args.master_port}"
    assert endpoint == "10.1.2.3:29555"
    assert args.rdzv_backend == "static"


# ---------------------------------------------------------------------------------------------------------------
# DeepSpeed
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DEEPSPEED_CONFIGS)
def test_deepspeed_config_resolves_like_trainer(name, training_args, tiny_florence2, monkeypatch):
    _, stage, (offload_optimizer, offload_param) = EXPECTED[name]
    ds_config, plugin = resolve_deepspeed_config(
        CONFIG_DIR / name, training_args, tiny_florence2, monkeypatch
    )

    # "auto" values filled from Seq2SeqTrainingArguments
    assert ds_config["train_micro_batch_size_per_gpu"] == PER_DEVICE_BATCH
    assert ds_config["gradient_accumulation_steps"] == GRAD_ACCUM
    assert ds_config["train_batch_size"] == training_args.world_size * PER_DEVICE_BATCH * GRAD_ACCUM
    assert ds_config["gradient_clipping"] == training_args.max_grad_norm
    assert ds_config["bf16"]["enabled"] is True and ds_config["fp16"]["enabled"] is False
    assert "auto" not in repr(ds_config)

    zero = ds_config["zero_optimization"]
    assert zero["stage"] == stage == plugin.zero_stage
    assert zero["offload_optimizer"]["device"] == offload_optimizer
    assert zero["offload_param"]["device"] == offload_param
    if stage == 3:
        # save_model() must write a consolidated, reloadable model.safetensors
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
        assert plugin.zero3_init_flag is True
    else:
        assert plugin.zero3_init_flag is False


@pytest.mark.parametrize("name", DEEPSPEED_CONFIGS)
def test_deepspeed_accepts_resolved_config(name, training_args, tiny_florence2, monkeypatch):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    ds_config, _ = resolve_deepspeed_config(CONFIG_DIR / name, training_args, tiny_florence2, monkeypatch)
    parsed = DeepSpeedConfig(ds_config)  # DeepSpeed's own (pydantic) validation, world size 1 here
    assert int(parsed.zero_config.stage) == EXPECTED[name][1]
    assert parsed.train_micro_batch_size_per_gpu == PER_DEVICE_BATCH
    assert parsed.gradient_accumulation_steps == GRAD_ACCUM


def test_fp32_override_for_cpu_runs(tmp_path, tiny_florence2, monkeypatch):
    """`--mixed_precision no` + recipe `bf16: false` (the CPU/CI combination) resolves to an fp32 config."""
    fp32_args = _make_training_args(tmp_path, bf16=False)
    ds_config, _ = resolve_deepspeed_config(
        CONFIG_DIR / "deepspeed_zero2.yaml", fp32_args, tiny_florence2, monkeypatch, "--mixed_precision", "no"
    )
    assert ds_config["bf16"]["enabled"] is False and ds_config["fp16"]["enabled"] is False


def test_config_precision_must_match_recipe(tmp_path, tiny_florence2, monkeypatch):
    """Config says bf16 but the recipe says bf16: false -> Trainer refuses (documented in the file headers)."""
    fp32_args = _make_training_args(tmp_path, bf16=False)
    with pytest.raises(ValueError, match=r"bf16\.enabled"):
        resolve_deepspeed_config(CONFIG_DIR / "deepspeed_zero2.yaml", fp32_args, tiny_florence2, monkeypatch)


# ---------------------------------------------------------------------------------------------------------------
# FSDP
# ---------------------------------------------------------------------------------------------------------------
def _fsdp_plugin(config_path, monkeypatch) -> FullyShardedDataParallelPlugin:
    args, _ = _launcher_args(config_path, "--num_processes", "2", "--main_process_port", "0")
    assert args.use_fsdp
    _apply_launcher_env(monkeypatch, prepare_multi_gpu_env(args))
    return FullyShardedDataParallelPlugin()  # built from the env, as the Trainer's Accelerator does


def test_fsdp2_plugin_and_wrap_policy(tiny_florence2, monkeypatch):
    plugin = _fsdp_plugin(CONFIG_DIR / "fsdp.yaml", monkeypatch)
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)  # Trainer.save_model writes model.safetensors
    assert set(plugin.transformer_cls_names_to_wrap) == FLORENCE2_WRAP_CLASSES

    # Never wrap less than transformers itself marks as unsplittable (BART layers only, today).
    assert set(tiny_florence2._no_split_modules) <= FLORENCE2_WRAP_CLASSES

    policy = fsdp2_prepare_auto_wrap_policy(plugin, tiny_florence2)
    wrapped = [type(m).__name__ for m in tiny_florence2.modules() if policy(m)]
    expected = [
        type(m).__name__ for m in tiny_florence2.modules() if type(m).__name__ in FLORENCE2_WRAP_CLASSES
    ]
    assert set(wrapped) == FLORENCE2_WRAP_CLASSES
    assert sorted(wrapped) == sorted(expected)


# ---------------------------------------------------------------------------------------------------------------
# broken configs must be rejected
# ---------------------------------------------------------------------------------------------------------------
def test_rejects_unknown_top_level_key(tmp_path):
    path = _write_variant(tmp_path, "multi_gpu.yaml", lambda d: d.update(mixed_precison="bf16"))
    with pytest.raises(ValueError, match="unknown keys"):
        load_config_from_file(str(path))


@pytest.mark.parametrize(
    ("source", "edit", "message"),
    [
        ("deepspeed_zero3.yaml", lambda d: d["deepspeed_config"].update(zero_stage=7), "zero_stage"),
        (
            "deepspeed_zero3.yaml",
            lambda d: d["deepspeed_config"].update(zero3_save_16bit_modle=True),
            "zero3_save_16bit_modle",
        ),
        (
            "deepspeed_zero3_offload.yaml",
            lambda d: d["deepspeed_config"].update(offload_param_device="gpu"),
            "offload_param_device",
        ),
        (
            "fsdp.yaml",
            lambda d: d["fsdp_config"].update(fsdp_auto_wrap_polcy="NO_WRAP"),
            "fsdp_auto_wrap_polcy",
        ),
        ("multi_gpu.yaml", lambda d: d.update(deepspeed_config={"zero_stage": 2}), "deepspeed_config"),
    ],
    ids=["zero_stage_7", "nested_typo", "bad_offload_device", "fsdp_typo", "ds_section_without_deepspeed"],
)
def test_check_config_rejects_broken_variants(tmp_path, source, edit, message):
    path = _write_variant(tmp_path, source, edit)
    with pytest.raises(ValueError, match=message):
        check_config(path)


def test_deepspeed_itself_rejects_zero_stage_7(tmp_path, training_args, tiny_florence2, monkeypatch):
    """Even past our own check, the resolved config of a `zero_stage: 7` file is refused by DeepSpeed."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    path = _write_variant(
        tmp_path, "deepspeed_zero2.yaml", lambda d: d["deepspeed_config"].update(zero_stage=7)
    )
    ds_config, _ = resolve_deepspeed_config(path, training_args, tiny_florence2, monkeypatch)
    with pytest.raises(ValueError):
        DeepSpeedConfig(ds_config)


def test_fsdp_wrap_class_typo_fails_on_the_model(tmp_path, tiny_florence2, monkeypatch):
    path = _write_variant(
        tmp_path,
        "fsdp.yaml",
        lambda d: d["fsdp_config"].update(
            fsdp_transformer_layer_cls_to_wrap="BartEncoderLayer,Florence2VisionBlok"
        ),
    )
    plugin = _fsdp_plugin(path, monkeypatch)
    with pytest.raises(ValueError, match="Florence2VisionBlok"):
        fsdp2_prepare_auto_wrap_policy(plugin, tiny_florence2)
