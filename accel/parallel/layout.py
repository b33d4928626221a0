"""The parallel layout of a worker group: world = cfg degree x Ulysses degree."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserInputError


@dataclass(frozen=True)
class ParallelLayout:
    ulysses: int = 1
    cfg: int = 1  # 2: cond and uncond on different sequence-parallel groups
    devices: tuple[int, ...] | None = None  # GPU indices; None: CPU ranks on gloo

    def __post_init__(self) -> None:
        if self.ulysses < 1:
            raise UserInputError(f"ulysses degree must be >= 1, got {self.ulysses}")
        if self.cfg not in (1, 2):
            raise UserInputError(f"cfg parallel degree must be 1 or 2, got {self.cfg}")
        if self.devices is not None and len(self.devices) != self.world:
            raise UserInputError(
                f"{len(self.devices)} GPUs given ({list(self.devices)}) but the layout needs "
                f"cfg {self.cfg} x ulysses {self.ulysses} = {self.world}"
            )
        if self.devices is not None and len(set(self.devices)) != len(self.devices):
            raise UserInputError(f"GPU list has duplicates: {list(self.devices)}")

    @classmethod
    def from_dict(cls, data: dict) -> "ParallelLayout":
        devices = data.get("devices")
        return cls(**{**data, "devices": None if devices is None else tuple(devices)})

    @property
    def world(self) -> int:
        return self.ulysses * self.cfg

    @property
    def backend(self) -> str:
        return "gloo" if self.devices is None else "nccl"

    @classmethod
    def for_ranks(cls, ranks: int, ulysses: int | None = None, cfg_parallel: bool = False,
                  devices: tuple[int, ...] | None = None) -> "ParallelLayout":
        cfg = 2 if cfg_parallel else 1
        if ulysses is None:
            if ranks % cfg:
                raise UserInputError(f"cfg parallel needs an even number of ranks, got {ranks}")
            ulysses = ranks // cfg
        layout = cls(ulysses=ulysses, cfg=cfg, devices=devices)
        if layout.world != ranks:
            raise UserInputError(f"{ranks} ranks do not fit cfg {cfg} x ulysses {ulysses}")
        return layout

    def check_tokens(self, patches: tuple[int, int, int], pixels_per_patch: int = 16) -> None:
        """gloo cannot gather uneven shards (NCCL runs them with cache-dit's uneven Ulysses), so on
        CPU ranks the token count (frames x rows x columns of patches) must divide by the degree."""
        frames, rows, cols = patches
        if self.backend != "gloo" or (frames * rows * cols) % self.ulysses == 0:
            return
        heights = [r * pixels_per_patch for r in range(1, rows + 9) if (frames * r * cols) % self.ulysses == 0]
        raise UserInputError(
            f"{frames * rows * cols} tokens ({frames} x {rows} x {cols} patches) do not split evenly over "
            f"ulysses degree {self.ulysses} on CPU ranks (gloo); valid heights at this width and length: "
            f"{heights[-4:]} pixels"
        )

    def check_model(self, num_heads: int) -> None:
        if num_heads % self.ulysses:
            valid = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
            raise UserInputError(
                f"ulysses degree {self.ulysses} does not divide the model's {num_heads} attention heads; "
                f"valid degrees: {valid}"
            )
