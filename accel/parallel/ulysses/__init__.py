"""Ulysses sequence parallelism of Wan's self-attention (worker side): processor, transports, head-major layout, copy engines."""
