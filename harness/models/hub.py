"""Hugging Face hub model ids (`model.path=org/name`): resolved once per process to a local snapshot.

`resolve(id)` returns the directory `download(id)` gives (huggingface_hub's `snapshot_download`,
which also serves an already-downloaded snapshot offline) and remembers it, so validation and
loading see the same files. Tests replace `download` to stand in for a reachable hub.
"""

from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_resolved: dict[str, str] = {}


class HubError(ValueError):
    """A hub id that cannot be resolved; the message is one line saying why and what to do."""


def is_hub_id(path: str) -> bool:
    """`org/name` that is not a local path (as transformers decides)."""
    return bool(HUB_ID.match(path)) and not Path(path).exists()


def download(repo_id: str, trust_remote_code: bool = False) -> str:
    """Local snapshot directory of `repo_id`: config, tokenizer and safetensors weights."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
    try:
        return snapshot_download(repo_id, allow_patterns=patterns + ["*.py"] * trust_remote_code)
    except GatedRepoError:
        raise HubError(f"model.path={repo_id} is a gated hub model: accept its terms on the hub "
                       "and log in (`hf auth login`), or download it and set model.path=<dir>"
                       ) from None
    except RepositoryNotFoundError:
        raise HubError(f"model.path={repo_id} is neither a local directory nor a model on the "
                       "hub: check the spelling") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:  # offline, no network, or not cached
        raise HubError(f"model.path={repo_id} is not a local directory and the Hugging Face hub "
                       f"is unreachable ({type(e).__name__}): download it where the hub is "
                       "reachable and set model.path=<local dir>") from None


def resolve(repo_id: str, trust_remote_code: bool = False) -> str:
    if repo_id not in _resolved:
        _resolved[repo_id] = download(repo_id, trust_remote_code)
    return _resolved[repo_id]
