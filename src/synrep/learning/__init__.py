"""Learning: the method registry, losses, encoders and heads, augmentations, one training step
and the trainer (single process or DDP). Imports ``data`` and ``generation``.
"""
