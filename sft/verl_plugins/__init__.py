"""Modules loaded into verl's training processes by name (data.custom_cls, VERL_USE_EXTERNAL_MODULES); nothing here is imported by the commands."""
