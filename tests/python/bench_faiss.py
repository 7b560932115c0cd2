"""FAISS side of the RAG search benchmark (run by `cargo bench -p kaito-rag`).

    python bench_faiss.py DIR DIM K [MODEL_DIR]

DIR holds base.f32 and queries.f32 (row-major float32, unit vectors) and
truth.u32 (the exact top-K ids of each query). Prints JSON: for an exact flat
index and for HNSW (M=32) at several efSearch values, build seconds, index
bytes, p50/p99 single-query latency in ms and recall@K. With MODEL_DIR, also
times sentence-transformers encode + faiss add over DIR/docs.json (docs/s).
"""

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import faiss
import numpy as np


def latency(index, queries, k):
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = index.search(q[None, :], k)
        times.append((time.perf_counter() - t) * 1000)
        found.append(ids[0])
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), np.array(found)


def recall(found, truth, k):
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def size(index):
    return int(faiss.serialize_index(index).nbytes)


def main():
    d, dim, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    faiss.omp_set_num_threads(1)
    out = {}
    if not os.environ.get("KAITO_BENCH_INGEST_ONLY"):
        out.update(vector_search(d, dim, k))
    if len(sys.argv) > 4:
        out["ingest_docs_per_s"] = ingest(d, sys.argv[4])
    json.dump(out, sys.stdout)


def vector_search(d, dim, k):
    base = np.fromfile(os.path.join(d, "base.f32"), dtype=np.float32).reshape(-1, dim)
    queries = np.fromfile(os.path.join(d, "queries.f32"), dtype=np.float32).reshape(-1, dim)
    truth = np.fromfile(os.path.join(d, "truth.u32"), dtype=np.uint32).reshape(len(queries), -1)
    out = {}
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(base)
    build = time.perf_counter() - t
    p50, p99, found = latency(flat, queries, k)
    out["flat"] = {"build_s": build, "bytes": size(flat), "p50_ms": p50, "p99_ms": p99, "recall": recall(found, truth, k)}
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(base)
    build = time.perf_counter() - t
    out["hnsw"] = []
    for ef in (32, 64, 128, 256):
        hnsw.hnsw.efSearch = ef
        p50, p99, found = latency(hnsw, queries, k)
        out["hnsw"].append({"ef": ef, "build_s": build, "bytes": size(hnsw), "p50_ms": p50, "p99_ms": p99,
                            "recall": recall(found, truth, k)})
    return out


def ingest(d, model_dir):
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(1)
    model = SentenceTransformer(model_dir, device="cpu")
    model.encode(["warm up"])
    with open(os.path.join(d, "docs.json")) as f:
        docs = json.load(f)
    t = time.perf_counter()
    vectors = model.encode(docs, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return len(docs) / (time.perf_counter() - t)


if __name__ == "__main__":
    main()
