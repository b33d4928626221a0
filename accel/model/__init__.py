"""The two Wan2.2 experts: files (host-safe header reading), loading, fp8_scaled, LoRA, latent format, fused blocks, engine options."""
