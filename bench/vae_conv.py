"""Where the Wan VAE decode's time goes in the worker: cuDNN's convolution choice and memory format.

    python bench/vae_conv.py             # one GPU: 480x832x81 (latent 21 x 60 x 104)

A random full-width Wan2.1 VAE (base_dim 96, bf16, as wan_2.1_vae.safetensors) decodes the same
randn latent through ``accel.model.vae.decode`` untiled (what the node picks on a large GPU):
cuDNN's heuristics (the default), ``torch.backends.cudnn.benchmark`` (first call, which tries the
algorithms, and the second), and the decoder's weights in channels_last_3d. Each variant's
frames against the default's (max abs). Writes bench/results/<date>-<gpu>-vae-conv.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from accel.model.vae import decode, load_vae, save_random_vae  # noqa: E402
from bench.common import device_name, markdown_table, versions, write_results  # noqa: E402


def timed(fn) -> tuple[torch.Tensor, float]:
    torch.cuda.synchronize()
    began = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, nargs=3, default=[21, 60, 104], help="frames, height, width")
    args = parser.parse_args()
    device = torch.device("cuda")
    with tempfile.TemporaryDirectory() as folder:
        path = save_random_vae(Path(folder) / "vae.safetensors", seed=0, base_dim=96, dtype=torch.bfloat16)
        vae = load_vae(path, device, torch.bfloat16)
    latent = torch.randn(1, 16, *args.latent, generator=torch.Generator().manual_seed(3)).to(device)
    decode(vae, latent[:, :, :2, :8, :8], tiling=False)  # warm-up on a small latent, as the node's first call

    rows, payload = [], {"latent": list(latent.shape), "versions": versions(), "device": device_name()}
    reference, seconds = timed(lambda: decode(vae, latent, tiling=False))
    rows.append(["cuDNN heuristics (default)", seconds, 0.0])
    payload["default_s"] = seconds
    torch.backends.cudnn.benchmark = True
    for label, key in (("cudnn.benchmark, first call", "benchmark_first_s"),
                       ("cudnn.benchmark, second call", "benchmark_second_s")):
        frames, seconds = timed(lambda: decode(vae, latent, tiling=False))
        rows.append([label, seconds, float((frames - reference).abs().max())])
        payload[key] = seconds
        print(rows[-1], flush=True)
    torch.backends.cudnn.benchmark = False
    for module in vae.modules():  # the 3-d convolutions' weights (the others are not rank 5)
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.to(memory_format=torch.channels_last_3d)
    for label, key in (("channels_last_3d, first call", "channels_last_first_s"),
                       ("channels_last_3d, second call", "channels_last_second_s")):
        frames, seconds = timed(lambda: decode(vae, latent, tiling=False))
        rows.append([label, seconds, float((frames - reference).abs().max())])
        payload[key] = seconds
    table = (f"# Wan VAE decode in one process, {device_name()}, latent {list(latent.shape)}, bf16, untiled\n\n"
             + markdown_table(["variant", "decode s", "max abs vs default"], rows))
    gpu = torch.cuda.get_device_name(0).replace(" ", "-")
    where = write_results(f"{gpu}-vae-conv", payload, table)
    print(table)
    print(f"wrote {where}.json / .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
