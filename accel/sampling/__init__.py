"""The denoising loop: runtime (a loaded model), the loop, schedules, topology (worker side, except comfy_sigmas)."""
