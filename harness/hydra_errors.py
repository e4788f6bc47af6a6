"""Hydra's own errors (an unknown group option, a misspelt key, a value of the wrong type, bad
override syntax) as one line with the closest valid names, instead of Hydra's 5-12 lines.

`one_line(error, overrides)` turns the exception Hydra raised while composing into that line.
"""

from __future__ import annotations

import difflib

from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError


def close_matches(word: str, choices, prefix: str = "") -> str:
    """'did you mean X?' for close matches, else the full list of choices."""
    choices = sorted(str(c) for c in choices)
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(prefix + c for c in close) + "?"
    return "choose from " + ", ".join(prefix + c for c in choices)


def _bad_override(overrides: list[str]) -> str | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for text in overrides:
        try:
            parser.parse_overrides([text])
        except OverrideParseException:
            return text
    return None


def one_line(error: BaseException, overrides: list[str]) -> str:
    """The line to print for an error Hydra or OmegaConf raised while composing the config."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        options = [o for o in (error.options or []) if not o.endswith("_schema")]
        if not group:
            return f"config {option!r} not found"
        return f"{group}={option} is not an option of {group}: {close_matches(option, options)}"
    if isinstance(error, OverrideParseException):
        bad = _bad_override(overrides)
        reason = str(error).splitlines()[0]
        return f"cannot parse the override {bad or ''}: {reason} (see Hydra's override grammar)"
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if not isinstance(cause, OmegaConfBaseException):  # Hydra's own message, on one line
        return "; ".join(line.strip() for line in str(error).splitlines() if line.strip()
                         ) or type(error).__name__
    key = cause.full_key or str(cause.key or "")
    detail = str(cause).splitlines()[0]
    if isinstance(cause, ConfigKeyError | AttributeError) and cause.key is not None:
        parent = cause.parent_node
        siblings = [k for k in parent.keys() if k != "hydra"] if hasattr(parent, "keys") else []
        where = key.rpartition(".")[0]
        return f"unknown key {key}: {close_matches(str(cause.key), siblings, f'{where}.' if where else '')}"
    if isinstance(cause, ValidationError):
        return f"{key}: {detail}"
    return f"{key}: {detail}" if key else detail
