"""sft/launcher.py's machinery: the settings table, verl key translation."""
