"""Shared pytest configuration. Fixtures defined here carry a prefix naming their owner (eval_...)."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: trains a tiny model with verl on CPU (tens of seconds each); skip with -m 'not slow'",
    )
