"""Shared chores of every command: help formatting, the user-error type, atomic files, dtypes."""
