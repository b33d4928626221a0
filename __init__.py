"""comfyui-cachedit-parallel: fast Wan2.2 in ComfyUI (cache-dit caching, FP8, Ulysses parallel).

ComfyUI imports this file by path; everything below is imported relatively.
"""

from .accel.logs import quiet_libraries
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.routes import register

WEB_DIRECTORY = "./web"

quiet_libraries()
register()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
