"""LaunchError: a launcher setting, override or input file is wrong (imported by sft/launch/*; not a command)."""

from __future__ import annotations

from sft.common.errors import UserError


class LaunchError(UserError):
    """A setting is wrong; the message says which and how to fix it."""
