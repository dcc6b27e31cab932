"""The demo's task (synthetic addition problems) and its tiny model."""
