"""What the Hugging Face Hub accepts as a model repository id and a branch name.

One home for the rules that a source spec (quantkit/source.py), a recipe's publish target
(quantkit/recipe.py) and `quantkit publish` (quantkit/upload.py) apply.
"""
from __future__ import annotations

import re

REPO_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$"  # ORG/NAME, ASCII as the Hub has it
REPO_ID = re.compile(REPO_ID_PATTERN)
MAX_REPO_ID = 96
BRANCH = re.compile(r"^(?!/)(?!.*//)(?!.*\.\.)(?!refs/)[A-Za-z0-9._/-]+(?<![/.])$")


def looks_like_repo_id(spec: str) -> bool:
    """ORG/NAME in the Hub's characters: a spec to look up on the Hub rather than on disk."""
    return bool(REPO_ID.match(spec))


def is_repo_id(repo_id: str) -> bool:
    """A model id the Hub would create: ORG/NAME, at most 96 characters, no '--' or '..', not ending in .git."""
    return (isinstance(repo_id, str) and looks_like_repo_id(repo_id) and len(repo_id) <= MAX_REPO_ID
            and not any(s in repo_id for s in ("--", "..")) and not repo_id.endswith(".git"))


def is_branch(name: str) -> bool:
    """A branch name the Hub (git) takes: no '..', '//', leading '/', 'refs/', trailing '/' or '.'."""
    return bool(BRANCH.match(name))
