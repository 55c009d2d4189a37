"""exo-gpu-vulkan: the Vulkan backend for exo-gpu-plugins (Rust engine on ash + gpu-allocator).

Importing the package loads no native code: `exo_gpu_vulkan.plugin` is the entry point that the
registry imports at discovery, and `exo_gpu_vulkan.backend.VulkanBackend` loads the engine
(`exo_gpu_vulkan._native`) when it is opened.
"""

__version__ = "0.2.0"
