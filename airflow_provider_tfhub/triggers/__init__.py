"""Triggers of the deferrable TF Hub sensors (registered under ``triggers`` in provider info)."""
