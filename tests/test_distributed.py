"""Distribution is *correct*, not just running: real `accelerate launch` runs of the DocVQA recipe with two
CPU processes over gloo, under DDP (`multi_gpu.yaml` + `--use_cpu true`) and DeepSpeed ZeRO
(`deepspeed_zero*.yaml` + `--ddp_backend gloo`; the recipes refuse `--use_cpu` there, which would drop
DeepSpeed), and of `recipes/launch.slurm`.

Every run starts from `warm_model_dir`, the tiny model briefly trained on the validation questions, so its
answers are non-empty and partly right: equal ANLS / Levenshtein scores then say the same predictions were
matched to the same questions, which a random model (empty answers, every score 0) could not show.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from conftest import REPO_ROOT, SMOKE_YAML, run_recipe_subprocess
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.models.loading import VISION_MODULES

CONFIGS = REPO_ROOT / "accelerate_configs"
SLURM_SCRIPT = REPO_ROOT / "recipes" / "launch.slurm"
NUM_PROCESSES = 2
EVAL_SIZE = 12  # conftest's synthetic DocVQA: 4 validation documents x 3 questions
EVAL_BATCH = 5  # 12 % (2 x 5) = 2: the last distributed eval batch is padded with copies
MAX_STEPS = 6
SAVE_STEPS = 3
# A global batch of 4: 2 processes x 2, or 1 process x 4 (test_ddp_matches_one_process_...).
TRAIN_ARGS = (
    "--max_steps", str(MAX_STEPS), "--learning_rate", "5e-4", "--warmup_steps", "0", "--logging_steps", "1",
    "--per_device_eval_batch_size", str(EVAL_BATCH), "--dataloader_num_workers", "0",
)  # fmt: skip
# Tolerances. Float32 sums run in another order (gloo adds two half-batch gradients where one process sums
# four examples): logged losses agree to ~1e-7 relative. Weights are compared through the whole training
# update, not element by element: Adam scales gradients that are zero in exact arithmetic (attention key
# biases: softmax ignores a shift shared by all keys) up to lr-sized float noise, so single elements differ
# by up to ~5e-5 while the updates as a whole agree to ~2e-4 relative (measured). Another data order or a
# missing gradient all-reduce gives O(1).
LOSS_RTOL = 1e-5
UPDATE_RTOL = 1e-3


def launcher(config: str) -> tuple[str, ...]:
    """Launcher flags for 2 processes with `config` (run_recipe_subprocess adds --mixed_precision no)."""
    return ("--config_file", str(CONFIGS / config), "--num_processes", str(NUM_PROCESSES),
            "--main_process_port", "0")  # fmt: skip


DDP = launcher("multi_gpu.yaml")


def recipe_args(model_dir: Path, data_dir: Path, output_dir: Path, *extra: str) -> tuple[str, ...]:
    # build_offline_fixtures off: it rebuilds a random tiny model in any model folder that lacks its build
    # marker, such as the warm model or a checkpoint.
    return (
        "--config", str(SMOKE_YAML), "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir),
        "--output_dir", str(output_dir), "--build_offline_fixtures", "false", *extra,
    )  # fmt: skip


def run_ok(*args: str, launcher_args: tuple[str, ...] = ()) -> None:
    """The DocVQA recipe, in one process or as `launcher_args` say; fails the test with the output's tail."""
    result = run_recipe_subprocess("docvqa.py", *args, launcher_args=launcher_args)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def results(output_dir: Path) -> dict[str, float]:
    return json.loads((output_dir / "all_results.json").read_text())


def logged_losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """State dict of a saved model, through `from_pretrained` (also checks the folder loads cleanly)."""
    model, info = AutoModelForImageTextToText.from_pretrained(model_dir, output_loading_info=True)
    assert not any(info.values()), f"{model_dir}: {info}"
    return model.state_dict()


def update_difference(
    start: dict[str, torch.Tensor], a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]
) -> float:
    """How differently two runs from `start` trained: ||a - b|| / ||b - start|| over all weights."""
    assert a.keys() == b.keys() == start.keys()
    difference = torch.cat([(a[name] - b[name]).flatten() for name in start]).double().norm()
    update = torch.cat([(b[name] - start[name]).flatten() for name in start]).double().norm()
    assert update > 0, "training did not change the weights"
    return (difference / update).item()


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def is_vision(name: str) -> bool:
    return any(f".{module}." in f".{name}" for module in VISION_MODULES)


def deepspeed_checkpoint(checkpoint: Path) -> dict:
    """The DeepSpeed states of a Trainer checkpoint: ZeRO stage, data-parallel size, optimizer shards."""
    (step_dir,) = checkpoint.glob("global_step*")
    model_states = sorted(step_dir.glob("*model_states.pt"))
    state = torch.load(model_states[0], map_location="cpu", weights_only=False)
    return {
        "stage": state["ds_config"]["zero_optimization"]["stage"],
        "dp_world_size": state["dp_world_size"],
        "train_batch_size": state["ds_config"]["train_batch_size"],
        "optimizer_shards": sorted(step_dir.glob("*optim_states.pt")),
    }


@pytest.fixture(scope="module")
def warm_model_dir(tiny_model_dir: Path, docvqa_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model after 60 single-process steps on the validation questions (eval ANLS ~0.2)."""
    out = tmp_path_factory.mktemp("warm") / "model"
    run_ok(
        *recipe_args(tiny_model_dir, docvqa_dir, out, "--train_split", "validation", "--max_steps", "60",
                     "--learning_rate", "5e-3", "--warmup_steps", "0.05",
                     "--per_device_train_batch_size", "6",
                     "--do_eval", "false", "--eval_strategy", "no", "--save_strategy", "no",
                     "--dataloader_num_workers", "0"),
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def ddp_run(warm_model_dir: Path, docvqa_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 processes x batch 2 under DDP: 6 steps, a checkpoint every 3 (only the last kept), then eval."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    run_ok(
        *recipe_args(warm_model_dir, docvqa_dir, out, *TRAIN_ARGS, "--per_device_train_batch_size", "2",
                     "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", str(SAVE_STEPS),
                     "--save_total_limit", "1", "--use_cpu", "true"),
        launcher_args=DDP,
    )  # fmt: skip
    return out


def test_ddp_trains_checkpoints_and_evaluates_every_example_once(
    ddp_run: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    assert EVAL_SIZE % (NUM_PROCESSES * EVAL_BATCH) != 0, (
        "a padded last eval batch is what this test is about"
    )
    state = json.loads((ddp_run / "trainer_state.json").read_text())
    # 48 training questions / (2 processes x 2) = 12 steps per epoch; an unsynchronised process needs 24.
    assert state["global_step"] == MAX_STEPS and state["epoch"] == pytest.approx(0.5)
    checkpoints = sorted(ddp_run.glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == [f"checkpoint-{MAX_STEPS}"]  # checkpoint-3 was rotated away
    checkpoint = checkpoints[0]
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()

    distributed = results(ddp_run)
    assert distributed["eval_count"] == distributed["eval_samples"] == EVAL_SIZE
    assert 0.0 < distributed["eval_anls"] < 1.0, (
        "scores must vary by question for the comparison to mean much"
    )

    single_dir = tmp_path / "single-process-eval"
    run_ok(
        *recipe_args(checkpoint, docvqa_dir, single_dir, "--do_train", "false",
                     "--per_device_eval_batch_size", str(EVAL_BATCH), "--dataloader_num_workers", "0"),
    )  # fmt: skip
    single = results(single_dir)
    assert single["eval_count"] == EVAL_SIZE
    for metric in ("eval_anls", "eval_levenshtein", "eval_exact_match"):
        assert distributed[metric] == single[metric], metric


def test_ddp_matches_one_process_with_the_same_global_batch(
    ddp_run: Path, warm_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    """2 processes x batch 2 and 1 process x batch 4 give the same losses and weights after 6 steps.

    Why the two runs see the same examples in every step: with its default `use_seedable_sampler`,
    accelerate swaps the Trainer's `RandomSampler` for a `SeedableRandomSampler` seeded with the same
    `torch.initial_seed()` (the recipe's `seed`) in every process and in the single-process run alike, so all
    draw one permutation; `BatchSamplerShard` (split_batches=False) then deals its consecutive batches of 2 to
    ranks 0 and 1 in turn, so global step k trains on permutation[4k:4k+4] in both runs. The loss matches too
    because the Trainer normalises by the label-token count summed over both processes
    (`average_tokens_across_devices`), not per process.
    """
    single_dir = tmp_path / "one-process"
    run_ok(
        *recipe_args(warm_model_dir, docvqa_dir, single_dir, *TRAIN_ARGS,
                     "--per_device_train_batch_size", "4", "--do_eval", "false", "--eval_strategy", "no",
                     "--save_strategy", "no"),
    )  # fmt: skip
    two, one = logged_losses(ddp_run), logged_losses(single_dir)
    assert len(one) == len(two) == MAX_STEPS
    assert two == pytest.approx(one, rel=LOSS_RTOL)

    start = weights(warm_model_dir)
    assert update_difference(start, weights(ddp_run), weights(single_dir)) < UPDATE_RTOL


def test_zero3_matches_ddp_and_saves_a_consolidated_checkpoint(
    ddp_run: Path, warm_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    """ZeRO-3 (params, grads and Adam states split over 2 processes) trains like DDP, evaluates with
    generation (`synced_gpus`) over every example once, and saves a consolidated, reloadable model."""
    out = tmp_path / "zero3"
    run_ok(
        *recipe_args(warm_model_dir, docvqa_dir, out, *TRAIN_ARGS, "--per_device_train_batch_size", "2",
                     "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", str(MAX_STEPS),
                     "--ddp_backend", "gloo"),
        launcher_args=launcher("deepspeed_zero3.yaml"),
    )  # fmt: skip
    checkpoint = out / f"checkpoint-{MAX_STEPS}"
    info = deepspeed_checkpoint(checkpoint)
    assert (info["stage"], info["dp_world_size"], info["train_batch_size"]) == (3, NUM_PROCESSES, 4)
    assert len(info["optimizer_shards"]) == NUM_PROCESSES

    # zero3_save_16bit_model: both the checkpoint and the final folder hold the full, gathered weights.
    final = weights(out)
    assert max_difference(weights(checkpoint), final) == 0.0
    assert all(tensor.numel() > 0 for tensor in load_file(out / "model.safetensors").values())
    assert update_difference(weights(warm_model_dir), final, weights(ddp_run)) < UPDATE_RTOL
    assert logged_losses(out) == pytest.approx(logged_losses(ddp_run), rel=LOSS_RTOL)

    # Weights ~2e-4 apart (relative to the update) still give the same greedy answers as DDP's.
    zero3, reference = results(out), results(ddp_run)
    assert zero3["eval_count"] == EVAL_SIZE
    for metric in ("eval_anls", "eval_levenshtein", "eval_exact_match"):
        assert zero3[metric] == reference[metric], metric


def check_training_mode(mode: str, start: Path, out: Path) -> None:
    """frozen_vision: vision weights bit-identical, language model trained; lora: only adapters saved."""
    if mode == "frozen_vision":
        before, after = weights(start), weights(out)
        vision = [name for name in before if is_vision(name)]
        assert len(vision) > 50
        assert all(torch.equal(before[name], after[name]) for name in vision), (
            "a frozen vision weight changed"
        )
        assert any(not torch.equal(before[n], after[n]) for n in before if "language_model" in n)
    elif mode == "lora":
        adapter = load_file(out / "adapter_model.safetensors")
        assert adapter and all("lora_" in name and "language_model" in name for name in adapter)
        assert all(tensor.numel() > 0 for tensor in adapter.values()), "ZeRO-3 placeholders were saved"
        assert not (out / "model.safetensors").exists()
    else:
        assert max_difference(weights(out), weights(start)) > 0


# lora (frozen tower and frozen base weights) runs by default; frozen_vision in the slow suite.
@pytest.mark.parametrize("mode", [pytest.param("frozen_vision", marks=pytest.mark.slow), "lora"])
def test_ddp_partial_training_modes(
    mode: str, warm_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    """With `ddp_find_unused_parameters: false` (the recipe default), DDP raises if any trainable parameter
    gets no gradient; the frozen tower and LoRA's frozen base must simply be left out of the reduction."""
    out = tmp_path / mode
    run_ok(
        *recipe_args(warm_model_dir, docvqa_dir, out, *TRAIN_ARGS, "--max_steps", "3",
                     "--training_mode", mode, "--per_device_train_batch_size", "2", "--do_eval", "false",
                     "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "true"),
        launcher_args=DDP,
    )  # fmt: skip
    assert torch.load(out / "training_args.bin", weights_only=False).ddp_find_unused_parameters is False
    # 3 steps of 2 processes x 2 = 12 of the 48 training questions; one process alone would be at 0.125.
    assert json.loads((out / "trainer_state.json").read_text())["epoch"] == pytest.approx(0.25)
    check_training_mode(mode, warm_model_dir, out)


SLOW = pytest.mark.slow


# The whole matrix is in the slow suite: by default ZeRO-3 runs above (2 processes, against DDP), and CI's
# gpu_check dry run trains, saves and reloads under ZeRO-2, ZeRO-3 and FSDP (one process each).
@pytest.mark.parametrize(
    ("config", "mode"),
    [
        pytest.param("deepspeed_zero1.yaml", "full", marks=SLOW),
        pytest.param("deepspeed_zero2.yaml", "full", marks=SLOW),
        pytest.param("deepspeed_zero2.yaml", "frozen_vision", marks=SLOW),
        pytest.param("deepspeed_zero2.yaml", "lora", marks=SLOW),
        pytest.param("deepspeed_zero3.yaml", "frozen_vision", marks=SLOW),
        pytest.param("deepspeed_zero3.yaml", "lora", marks=SLOW),
        # The first run JIT-compiles DeepSpeed's CPU Adam (~2 minutes, cached in ~/.cache/torch_extensions).
        pytest.param("deepspeed_zero3_offload.yaml", "full", marks=SLOW),
    ],
)
def test_deepspeed_modes(
    config: str, mode: str, warm_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run_ok(
        *recipe_args(warm_model_dir, docvqa_dir, out, *TRAIN_ARGS, "--max_steps", "3",
                     "--training_mode", mode, "--per_device_train_batch_size", "2", "--eval_strategy", "no",
                     "--save_strategy", "steps", "--save_steps", "3", "--ddp_backend", "gloo"),
        launcher_args=launcher(config),
    )  # fmt: skip
    info = deepspeed_checkpoint(out / "checkpoint-3")
    assert info["stage"] == int(config.split("zero")[1][0]) and info["dp_world_size"] == NUM_PROCESSES
    assert results(out)["eval_count"] == EVAL_SIZE
    check_training_mode(mode, warm_model_dir, out)


@pytest.mark.slow
def test_zero3_merges_lora_like_ddp(warm_model_dir: Path, docvqa_dir: Path, tmp_path: Path) -> None:
    """merge_lora under ZeRO-3 (adapters merged into partitioned weights) saves what DDP saves."""
    merged = {}
    for name, launch, backend in (
        ("ddp", DDP, ("--use_cpu", "true")),
        ("zero3", launcher("deepspeed_zero3.yaml"), ("--ddp_backend", "gloo")),
    ):
        out = tmp_path / name
        run_ok(
            *recipe_args(warm_model_dir, docvqa_dir, out, *TRAIN_ARGS, "--max_steps", "3",
                         "--training_mode", "lora", "--merge_lora", "true", "--per_device_train_batch_size", "2",
                         "--do_eval", "false", "--eval_strategy", "no", "--save_strategy", "no", *backend),
            launcher_args=launch,
        )  # fmt: skip
        merged[name] = weights(out)
    assert update_difference(weights(warm_model_dir), merged["zero3"], merged["ddp"]) < UPDATE_RTOL


@pytest.mark.slow
def test_unconnected_processes_are_refused(warm_model_dir: Path, docvqa_dir: Path, tmp_path: Path) -> None:
    """Without a GPU and without --use_cpu, accelerate finds no backend for its 2 processes (world size 1, no
    DDP): each would train its own copy into the same output_dir. The recipe stops at argument parsing with
    one line saying what to add."""
    result = run_recipe_subprocess(
        "docvqa.py", *recipe_args(warm_model_dir, docvqa_dir, tmp_path / "out"), launcher_args=DDP
    )
    assert result.returncode != 0
    assert "the launcher started 2 processes but they do not train together (world size 1)" in result.stderr
    assert "--use_cpu true" in result.stderr
    assert not (tmp_path / "out").exists()


def test_use_cpu_with_a_deepspeed_config_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """transformers' CPU path would build plain DDP and ignore the DeepSpeed config the launcher passed."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `--config_file deepspeed_zero*.yaml` sets
    with pytest.raises(SystemExit) as exit_info:
        parse_recipe_args(["--output_dir", str(tmp_path), "--use_cpu", "true"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "use_cpu drops the DeepSpeed config" in error and "--ddp_backend gloo" in error
    assert error.count("\n") == 1


# ------------------------------------------------------------------------------------------------------------
# recipes/launch.slurm
# ------------------------------------------------------------------------------------------------------------
# Runs its command once per node, in parallel, with that node's SLURM_NODEID. With WAIT_FOR_PORT, node 0
# starts first and the others once it listens there: all "nodes" are this machine, so each would try to
# host the rendezvous (on a cluster only the first node's hostname matches the rendezvous address).
FAKE_SRUN = """#!/bin/bash
while [[ $1 == --* ]]; do shift; done
for ((i = 0; i < SLURM_NNODES; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i "$@" &
    if [[ $i == 0 && -n ${WAIT_FOR_PORT:-} ]]; then
        until (: < "/dev/tcp/localhost/$WAIT_FOR_PORT") 2> /dev/null; do kill -0 $! || break; sleep 0.5; done
    fi
done
status=0
for job in $(jobs -p); do wait "$job" || status=1; done
exit $status
"""


def fake_slurm(bin_dir: Path, accelerate: str) -> dict[str, str]:
    """`srun` (FAKE_SRUN), `scontrol` (the job's first host is localhost) and `accelerate` on PATH, plus the
    variables sbatch sets for a 2-node job."""
    bin_dir.mkdir()
    scripts = {
        "srun": FAKE_SRUN,
        # Real scontrol expands the nodelist (the first host is where the rendezvous runs) and requeues a job
        # (here: noted in $REQUEUE_LOG).
        "scontrol": '#!/bin/bash\n[[ "$*" == "show hostnames node[01-02]" ]] && printf "localhost\\nnode02\\n"\n'
        '[[ $1 == requeue ]] && echo "$2" >> "$REQUEUE_LOG"\nexit 0\n',
        "accelerate": accelerate,
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env |= {"PATH": f"{bin_dir}:{env['PATH']}", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[01-02]"}
    return env | {"SLURM_JOB_ID": "123456", "SLURM_GPUS_ON_NODE": "4"}


@pytest.mark.parametrize("config", ["multi_node.yaml", "deepspeed_zero3.yaml"])
def test_slurm_script_passes_the_slurm_topology_to_accelerate(config: str, tmp_path: Path) -> None:
    # The fake accelerate records its arguments; they are then parsed by accelerate's own launcher code.
    record = 'printf "%s\\0" "$@" > "$RECORD_DIR/node-$SLURM_NODEID"\n'
    env = fake_slurm(tmp_path / "bin", "#!/bin/bash\n" + record) | {"RECORD_DIR": str(tmp_path)}
    extra = ("--config", "recipes/docvqa/large_full.yaml", "--output_dir", "outputs/with space")
    result = subprocess.run(
        ["bash", str(SLURM_SCRIPT), f"accelerate_configs/{config}", "recipes/docvqa.py", *extra],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    port = str(20000 + 123456 % 20000)
    for rank in (0, 1):
        argv = (tmp_path / f"node-{rank}").read_text().split("\0")[:-1]
        assert argv[0] == "launch"
        args = launch_command_parser().parse_args(argv[1:])
        # A requeued job runs this same command: it resumes from the newest complete checkpoint, if any.
        assert args.training_script == "recipes/docvqa.py"
        assert args.training_script_args == ["--resume_from_checkpoint", "auto", *extra]
        args, defaults, _ = _validate_launch_command(args)
        assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 8, rank)
        assert args.rdzv_backend == "c10d"
        if args.use_deepspeed:
            assert args.deepspeed_multinode_launcher == "standard"  # torchrun, same as DDP
            args.deepspeed_fields_from_accelerate_config = ",".join(
                defaults.deepspeed_config
            )  # as launch does
            command, _ = prepare_deepspeed_cmd_env(args)
            assert command is None
        else:
            prepare_multi_gpu_env(args)
        assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "4", rank)
        assert args.rdzv_endpoint == f"localhost:{port}"


def test_slurm_script_refuses_to_run_outside_a_job(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    result = subprocess.run(
        ["bash", str(SLURM_SCRIPT), "accelerate_configs/multi_node.yaml", "recipes/docvqa.py"],
        cwd=REPO_ROOT, env=env | {"GPUS_PER_NODE": "1"}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "submit with sbatch" in result.stderr


def two_node_job(tmp_path: Path) -> dict[str, str]:
    """The environment of a launch.slurm job on two 'nodes' (this machine), one CPU process each, joined by
    the c10d rendezvous; `scontrol requeue` is noted in tmp_path/requeued."""
    accelerate = (
        f'#!/bin/bash\nexec {shlex.quote(sys.executable)} -m accelerate.commands.accelerate_cli "$@"\n'
    )
    with socket.socket() as sock:  # a free port for the rendezvous (port 0 would give each node its own)
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = fake_slurm(tmp_path / "bin", accelerate) | {"GPUS_PER_NODE": "1", "MAIN_PROCESS_PORT": str(port)}
    return env | {
        "WAIT_FOR_PORT": str(port),
        "REQUEUE_LOG": str(tmp_path / "requeued"),
        "SLURM_SUBMIT_DIR": str(tmp_path),
    }


def slurm_command(model_dir: Path, data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "bash", str(SLURM_SCRIPT), "accelerate_configs/multi_node.yaml", "recipes/docvqa.py",
        *recipe_args(model_dir, data_dir, out, *TRAIN_ARGS, "--per_device_train_batch_size", "2",
                     "--do_eval", "false", "--eval_strategy", "no", "--use_cpu", "true", *extra),
    ]  # fmt: skip


def run_job(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.mark.slow
def test_slurm_script_trains_on_two_nodes(warm_model_dir: Path, docvqa_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_job(slurm_command(warm_model_dir, docvqa_dir, out, "--save_strategy", "no"), two_node_job(tmp_path))
    assert json.loads((out / "trainer_state.json").read_text())["epoch"] == pytest.approx(0.5)


@pytest.mark.slow
def test_slurm_script_requeues_a_signalled_job_that_resumes_bit_identically(
    dropout_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    """Slurm's warning (SIGUSR1 to every process of the job; the batch shell and the launchers ignore it) makes
    both nodes save and stop; the script requeues the job, whose second run (the same command) resumes and
    ends with the weights and losses of an uninterrupted job."""
    env, steps = (
        two_node_job(tmp_path),
        ("--max_steps", "12", "--save_strategy", "steps", "--save_steps", "4"),
    )
    run_job(slurm_command(dropout_model_dir, docvqa_dir, tmp_path / "uninterrupted", *steps), env)

    out = tmp_path / "requeued-job"
    command = slurm_command(dropout_model_dir, docvqa_dir, out, *steps)
    log = tmp_path / "first-run.log"
    with log.open("w") as output:
        job = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    while not (out / "checkpoint-4" / "trainer_state.json").exists():
        assert job.poll() is None, log.read_text()[-4000:]
        time.sleep(0.01)
    # Slurm signals every process of the job (its cgroup); torchrun's workers have sessions of their own.
    for process in [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # e.g. a `sleep` of the fake srun that just ended
            process.send_signal(signal.SIGUSR1)
    assert job.wait(timeout=600) == 0, log.read_text()[-4000:]
    assert (tmp_path / "requeued").read_text() == "123456\n"
    assert "requeueing job 123456" in log.read_text()

    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert re.search(r"Resuming training from \S+/checkpoint-([5-9]|1[01])\b", result.stdout + result.stderr)
    assert (tmp_path / "requeued").read_text() == "123456\n"  # finished: not requeued again
    assert logged_losses(out) == logged_losses(tmp_path / "uninterrupted")
    expected, got = (
        load_file(tmp_path / "uninterrupted" / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    assert all(torch.equal(expected[name], got[name]) for name in expected)
