"""ComfyUI-free core of the pack: Wan2.2 dual-expert sampling with cache-dit.

Nothing below this package imports ComfyUI; worker processes import it by file path
(see ``parallel/launch.py``), so every import inside it is relative.
"""

__version__ = "0.1.0"
