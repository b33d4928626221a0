"""ComfyUI node adapters over ``accel``: translate ComfyUI types, validate, call the core."""

from .cache_config import CacheDiTConfig
from .loader import WanDualTransformerLoader
from .quantize import FP8Quantize
from .sampler import UlyssesParallelSampler
from .scm_mask import SCMMask
from .smoke import WanSmokeConditioning

NODE_CLASS_MAPPINGS = {
    "WanDualTransformerLoader": WanDualTransformerLoader,
    "CacheDiTConfig": CacheDiTConfig,
    "SCMMask": SCMMask,
    "FP8Quantize": FP8Quantize,
    "UlyssesParallelSampler": UlyssesParallelSampler,
    "WanSmokeConditioning": WanSmokeConditioning,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "WanDualTransformerLoader": "Load Wan2.2 Dual Transformer",
    "CacheDiTConfig": "Cache-DiT Config",
    "SCMMask": "SCM Mask",
    "FP8Quantize": "FP8 Quantize",
    "UlyssesParallelSampler": "Ulysses Parallel Sampler",
    "WanSmokeConditioning": "Wan Smoke Conditioning (testing)",
}
