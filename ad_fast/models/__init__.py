"""The four methods."""
