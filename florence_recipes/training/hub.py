"""The Hugging Face Hub: check write access before a run, not after it."""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import HfApi

from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.errors import RecipeError, first_line

logger = logging.getLogger(__name__)


def check_hub_access(training_args: FlorenceTrainingArguments) -> None:
    """With --push_to_hub, fail now — not after a night of training — if the Hub or write access is missing."""
    if not training_args.push_to_hub:
        return
    repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
    try:
        identity = HfApi().whoami(token=training_args.hub_token)
    except Exception as err:  # offline mode, network error, missing or invalid token
        reason = first_line(err)
        raise RecipeError(
            f"--push_to_hub: cannot authenticate with the Hugging Face Hub ({reason}); "
            "run `hf auth login` or set HF_TOKEN, or drop --push_to_hub"
        ) from None
    role = identity.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise RecipeError(
            f"--push_to_hub: the Hub token is read-only; {repo_id} needs a token with write access"
        )
    namespace = repo_id.split("/")[0] if "/" in repo_id else identity["name"]
    writable = {identity["name"]} | {
        org["name"]
        for org in identity.get("orgs", [])
        if org.get("roleInOrg", "write") in ("write", "admin", None)
    }
    if namespace not in writable:
        raise RecipeError(
            f"--push_to_hub: {identity['name']} cannot write to namespace {namespace!r} "
            f"(writable: {', '.join(sorted(writable))}); set --hub_model_id"
        )
    logger.info("Hub access checked: will push to %s as %s", repo_id, identity["name"])
