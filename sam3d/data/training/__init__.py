"""The training pipeline: the volume cache, the patch queue and the patches with simulated clicks."""
