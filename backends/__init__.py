"""Inference backends behind one small protocol (see `backends.base`).

Nothing here imports torch at package import time; see `backends.registry`.
"""
