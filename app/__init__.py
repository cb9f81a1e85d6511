"""The Lightning application: tasks, CLI entry, visualisation and benchmark commands."""
