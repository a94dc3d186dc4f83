"""Which input resolution for EfficientNet-Lite0 embeddings of 28x28 images: throughput and a linear probe.

    python benchmarks/embed_resolution.py                       # Fashion-MNIST, 32/64/96/128 px
    python benchmarks/embed_resolution.py --resolutions 64 224 --train 3000 --test 1500

For each resolution: images per second of `sdmcl embed`'s EfficientNet-Lite0 feature extractor
(1 thread, batches of 64, median of 3 timed passes over 256 images) and the test accuracy of a
logistic regression trained on the features of a seeded subset (the raw pixels as a baseline).
Needs `pip install 'sdmcl[embed]'`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="fashion-mnist")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 96, 128])
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from sdmcl.data.sources import load_dataset
    from sdmcl.embed import efficientnet_lite0

    data = load_dataset(args.source)
    rng = np.random.RandomState(0)
    tr = rng.choice(len(data.train_y), args.train, replace=False)
    te = rng.choice(len(data.test_y), args.test, replace=False)

    def probe(a, b) -> float:
        s = StandardScaler().fit(a)
        clf = LogisticRegression(max_iter=3000).fit(s.transform(a), data.train_y[tr])
        return clf.score(s.transform(b), data.test_y[te])

    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    print(f"pixels: linear probe {100 * probe(flat(data.train_x[tr]), flat(data.test_x[te])):.1f}%")
    for res in args.resolutions:
        bb = efficientnet_lite0(res, torch.device("cpu"))

        def feats(x):
            with torch.inference_mode():
                return torch.cat([bb.features(torch.from_numpy(x[i : i + 64])) for i in range(0, len(x), 64)]).numpy()

        sample = data.train_x[:256]
        feats(sample[:64])
        times = []
        for _ in range(3):
            t = time.perf_counter()
            feats(sample)
            times.append(time.perf_counter() - t)
        speed = 256 / statistics.median(times)
        acc = probe(feats(data.train_x[tr]), feats(data.test_x[te]))
        print(f"{res}x{res}: {speed:.0f} images/s, linear probe {100 * acc:.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
