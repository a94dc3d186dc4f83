"""Seconds per ConvMixer training step, channels-last (what sdmcl's trunk uses) against the
default contiguous layout, paired step by step in one process.

    .venv/bin/python benchmarks/convmixer_layout.py [--steps 7] [--threads 1]

One AdamW step (forward, cross-entropy, backward, step) on a batch of 128 Fashion-MNIST-sized
images (1×28×28), for three sizes. The two layouts alternate step by step so both see the
same machine load; the first step of each is warm-up and dropped; the ratio is the median
of the paired ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from sdmcl.models.convmixer import ConvMixer, ConvMixerConfig

SIZES = [(64, 4, 4), (128, 6, 2), (256, 8, 4)]  # (hdim, depth, patch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(128, 784, generator=g), torch.randint(0, 10, (128,), generator=g)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 128 of 1x28x28, {args.steps - 1} paired steps")
    for hdim, depth, patch in SIZES:
        cfg = ConvMixerConfig(hdim=hdim, depth=depth, patch_size=patch)
        last = ConvMixer(cfg, (1, 28, 28), 10)  # channels-last, as built
        plain = ConvMixer(cfg, (1, 28, 28), 10)
        for p in plain.parameters():  # the default layout: fresh tensors with standard strides (for a
            p.data = torch.empty(p.shape).copy_(p.data)  # kernel with one input channel .contiguous() keeps them)
        plain.trunk.forward = _contiguous_forward(plain.trunk)
        models = {"channels_last": last, "contiguous": plain}
        opts = {k: torch.optim.AdamW(m.parameters(), lr=0.01) for k, m in models.items()}
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(args.steps):
            for name, model in models.items():
                t = time.perf_counter()
                opts[name].zero_grad()
                F.cross_entropy(model(x), y).backward()
                opts[name].step()
                times[name].append(time.perf_counter() - t)
        ratios = [c / p for c, p in zip(times["channels_last"][1:], times["contiguous"][1:])]
        med = {k: statistics.median(v[1:]) * 1e3 for k, v in times.items()}
        print(f"hdim {hdim:>3} depth {depth} patch {patch}: contiguous {med['contiguous']:.0f} ms, "
              f"channels-last {med['channels_last']:.0f} ms, ratio {statistics.median(ratios):.2f}")


def _contiguous_forward(trunk):
    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, *trunk.input_shape).contiguous()
        if trunk.input_mean is not None:
            x = (x - trunk.input_mean) / trunk.input_std
        return trunk.blocks(trunk.patch_norm(trunk.act(trunk.patches(x)))).mean((2, 3))

    return forward


if __name__ == "__main__":
    main()
