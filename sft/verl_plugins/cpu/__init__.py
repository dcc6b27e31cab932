"""Plugins only CPU runs load (the launchers add them when DEVICE resolves to cpu); no GPU run loads these."""
