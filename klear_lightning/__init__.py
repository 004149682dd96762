"""KLEAR: unified multi-task audio-video joint generation (single-tower MM-DiT, flow matching)."""

__version__ = "0.1.0"
