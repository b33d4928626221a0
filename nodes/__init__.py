"""ComfyUI node adapters over ``accel``: translate ComfyUI types, validate, call the core.

The nodes use ComfyUI's current node API (``comfy_api.latest``, via nodes/comfy.py) and are
registered through ``CacheDiTExtension`` (the pack's ``comfy_entrypoint``).
"""

from .cache_config import CacheDiTConfig
from .comfy import ComfyExtension
from .loader import WanDualTransformerLoader
from .lora import WanDualLoraLoader
from .quantize import FP8Quantize
from .sampler import UlyssesParallelSampler
from .scm_mask import SCMMask
from .smoke import WanSmokeConditioning
from .vae_decode import WanVAEDecode

NODES = [WanDualTransformerLoader, WanDualLoraLoader, CacheDiTConfig, SCMMask, FP8Quantize, UlyssesParallelSampler,
         WanVAEDecode, WanSmokeConditioning]

# Node ids before the CacheDiT_ prefix (the pack's saved workflows were migrated; see examples/workflows).
OLD_NODE_IDS = {
    "WanDualTransformerLoader": "CacheDiT_WanDualTransformerLoader",
    "CacheDiTConfig": "CacheDiT_Config",
    "SCMMask": "CacheDiT_SCMMask",
    "FP8Quantize": "CacheDiT_FP8Quantize",
    "UlyssesParallelSampler": "CacheDiT_UlyssesParallelSampler",
    "WanSmokeConditioning": "CacheDiT_WanSmokeConditioning",
}


class CacheDiTExtension(ComfyExtension):
    async def get_node_list(self) -> list:
        return list(NODES)
