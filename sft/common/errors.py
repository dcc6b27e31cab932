"""The one error type for a user's mistake (imported; not a command).

Every command raises a subclass of `UserError` for bad data, settings or templates; its
message is one line that names the file, the line and the fix. `main()` functions catch
`UserError` (and only it), print the message and exit 2: the user never sees a traceback for
their own mistake, and a real bug still shows one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in the user's data, template or settings; the message says what to do."""


def exit_on_user_error(main: Callable[[], int | None], prefix: str) -> int:
    """Run `main`; on UserError print `prefix: message` to stderr and return 2."""
    try:
        return main() or 0
    except UserError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 2
