"""Phantom CT generator and dataset readers (torch-free)."""
