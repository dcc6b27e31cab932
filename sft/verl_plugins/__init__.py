"""Modules loaded into verl's training processes by name (data.custom_cls, VERL_USE_EXTERNAL_MODULES); which
ones a run loads, and the verl internals each replaces: compat.py (PLUGINS, INTERNALS). cpu/ holds those only
CPU runs load."""
