"""comfyui-cachedit-parallel: fast Wan2.2 in ComfyUI (cache-dit caching, FP8, Ulysses parallel).

ComfyUI imports this file by path; everything below is imported relatively. The nodes come from
``comfy_entrypoint`` (ComfyUI's node API); this module must not export NODE_CLASS_MAPPINGS: ComfyUI
would then load it the V1 way and ignore the entrypoint.
"""

from .accel.logs import quiet_libraries
from .nodes import CacheDiTExtension
from .nodes.routes import register

WEB_DIRECTORY = "./web"

quiet_libraries()
register()


async def comfy_entrypoint() -> CacheDiTExtension:
    return CacheDiTExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
