"""Which index finds an SDM layer's top k fastest: faiss (flat, IVF, HNSW inner-product
indexes) against the low-rank prescreen of models/topk_search.py, on a trained layer.

    .venv/bin/pip install faiss-cpu          # optional: without it only the prescreen is timed
    .venv/bin/python benchmarks/topk_index.py [--neurons 10000] [--epochs 3]

The layer: an SDMLP after the GABA switch (counters at T) trained `--epochs` epochs on task
1 of Split Fashion-MNIST (with the approximate top-32 layer, which is cheap); queries:
batches of 128 training inputs of task 2, one thread. Each method returns the batch's
union of candidate neurons; reported: milliseconds per batch for the search alone (median
of 5 over 10 batches), the union's size, and the recall of each input's true top 10.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scale import TOP32, call_hook, engine_for, sdmlp


def timed(fn, batches, reps=5):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = [fn(b) for b in batches]
        ts.append((time.perf_counter() - t0) / len(batches))
    return statistics.median(ts) * 1e3, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    engine = engine_for(sdmlp(args.neurons, "lowrank", search_min_neurons=0, **TOP32))
    call_hook(engine.model, "on_task_start", engine.tasks[0])
    for e in range(args.epochs):
        engine.train_epoch(engine.tasks[0], e)
    call_hook(engine.model, "on_task_start", engine.tasks[1])
    model, search = engine.model, engine.model.search
    w = model.addresses.weight.detach().contiguous()
    x = engine.train_inputs(engine.tasks[1])
    batches = [x[i * 128 : (i + 1) * 128] for i in range(10)]
    k, n = 10, args.neurons
    tops = [torch.topk(b @ w.T, k, dim=1).indices for b in batches]
    rows = []

    def report(label, ms, unions):
        recall = []
        for top, u in zip(tops, unions):
            inside = torch.zeros(n, dtype=torch.bool)
            inside[torch.as_tensor(u, dtype=torch.long)] = True
            recall.append(float(inside[top].float().mean()))
        rows.append(f"| {label} | {ms:.1f} | {statistics.mean(len(u) for u in unions):.0f} | {statistics.mean(recall):.4f} |")

    ms, _ = timed(lambda b: torch.topk((b @ w.T).relu_(), k + 1, dim=1), batches)
    rows.append(f"| exact: X·Wᵀ and Top-K (the reference) | {ms:.1f} | — | 1 |")
    g = model.topk.responses()
    for label, margin, cands in (("prescreen, threshold rule (margin 0.05, default)", 0.05, 0),
                                 ("prescreen, each input's 32 best", None, 32), ("prescreen, each input's 16 best", None, 16)):
        search.margin, search.candidates, search.max_union = margin, cands, 1.0
        search.eval()
        ms, out = timed(lambda b: search.select(b, model.addresses.weight, g, k), batches)
        report(label, ms, [u.tolist() for u in out])
    try:
        import faiss
    except ImportError:
        rows.append("| faiss | (not installed: pip install faiss-cpu) | | |")
    else:
        faiss.omp_set_num_threads(1)
        wn = w.numpy()

        def faiss_union(index, kk=16):
            return lambda b: sorted(set(index.search(b.numpy(), kk)[1].reshape(-1).tolist()) - {-1})

        flat = faiss.IndexFlatIP(wn.shape[1])
        flat.add(wn)
        report("faiss IndexFlatIP, 16 per input", *timed(faiss_union(flat), batches))
        for nlist, nprobe in ((100, 4), (100, 10)):
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(wn.shape[1]), wn.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.train(wn)
            ivf.add(wn)
            ivf.nprobe = nprobe
            report(f"faiss IVF{nlist}, nprobe {nprobe}, 16 per input", *timed(faiss_union(ivf), batches))
        hnsw = faiss.IndexHNSWFlat(wn.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.add(wn)
        for ef in (32, 64):
            hnsw.hnsw.efSearch = ef
            report(f"faiss HNSW32, efSearch {ef}, 16 per input", *timed(faiss_union(hnsw), batches))
    print(f"SDM layer of {n:,} neurons, batches of 128, 1 thread; top-{k} recall of the batch's candidates\n")
    print("| method | ms per batch | candidates (union) | top-10 recall |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
