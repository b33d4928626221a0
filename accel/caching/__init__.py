"""cache-dit caching per expert and branch: fresh contexts per job, the group-reduced similarity (worker side)."""
