"""Hydra launcher plugins shipped with audioldm2-fast (``hydra/launcher=local_gpus``)."""
