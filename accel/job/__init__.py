"""Host-safe: what a job is (settings, presets, SCM masks, validation, the Job type), importable in ComfyUI's process."""
