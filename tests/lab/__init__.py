"""The SSH lab (see lab.py)."""
