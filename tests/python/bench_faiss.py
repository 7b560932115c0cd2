"""FAISS side of the RAG search benchmark (run by `cargo bench -p kaito-rag`).

    python bench_faiss.py DIR DIM K [MODEL_DIR]

DIR holds base.f32 and queries.f32 (row-major float32, unit vectors) and
truth.u32 (the exact top-K ids of each query). Prints JSON: for an exact flat
index and for HNSW (M=32) at several efSearch values, build seconds (all cores), index
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


def qps_all_cores(index, queries, k):
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    index.search(queries, k)
    qps = len(queries) / (time.perf_counter() - t)
    faiss.omp_set_num_threads(1)
    return qps


def row(index, queries, truth, k, build, d, name, configure=lambda index: None):
    configure(index)
    p50, p99, found = latency(index, queries, k)
    # Cold start: read the saved index back and answer one query.
    path = os.path.join(d, f"{name}.faiss")
    faiss.write_index(index, path)
    t = time.perf_counter()
    again = faiss.read_index(path)
    configure(again)
    again.search(queries[:1], k)
    cold = time.perf_counter() - t
    os.remove(path)
    return {"build_s": build, "bytes": size(index), "p50_ms": p50, "p99_ms": p99, "recall": recall(found, truth, k),
            "cold_ms": cold * 1000, "qps_all": qps_all_cores(index, queries, k)}


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
    """Build times use every core (as a service would build); latency is one
    query at a time on one thread; qps_all is a batch over all cores."""
    base = np.fromfile(os.path.join(d, "base.f32"), dtype=np.float32).reshape(-1, dim)
    queries = np.fromfile(os.path.join(d, "queries.f32"), dtype=np.float32).reshape(-1, dim)
    truth = np.fromfile(os.path.join(d, "truth.u32"), dtype=np.uint32).reshape(len(queries), -1)
    cores = os.cpu_count() or 1
    out = {}
    faiss.omp_set_num_threads(cores)
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(base)
    build = time.perf_counter() - t
    out["flat"] = row(flat, queries, truth, k, build, d, "flat")
    faiss.omp_set_num_threads(cores)
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(base)
    build = time.perf_counter() - t
    out["hnsw"] = []
    for ef in (16, 32, 64, 128, 256):
        def set_ef(index, ef=ef):
            index.hnsw.efSearch = ef
        r = row(hnsw, queries, truth, k, build, d, "hnsw", set_ef)
        r["ef"] = ef
        out["hnsw"].append(r)
    # IVF-PQ (48 sub-quantisers of 8 bits: 48 bytes a vector, like a 384-bit
    # code) with the exact vectors kept for rescoring the shortlist.
    nlist = int(4 * np.sqrt(len(base)))
    faiss.omp_set_num_threads(cores)
    t = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dim)
    ivfpq = faiss.IndexIVFPQ(quantizer, dim, nlist, 48, 8, faiss.METRIC_INNER_PRODUCT)
    ivfpq.train(base[: min(len(base), 100 * nlist)])
    refine = faiss.IndexRefineFlat(ivfpq)
    refine.add(base)
    refine.k_factor = 10
    build = time.perf_counter() - t
    out["ivfpq"] = []
    for nprobe in (8, 16, 32, 64, 128):
        def set_nprobe(index, nprobe=nprobe):
            faiss.extract_index_ivf(index).nprobe = nprobe
        r = row(refine, queries, truth, k, build, d, "ivfpq", set_nprobe)
        r["nprobe"] = nprobe
        r["nlist"] = nlist
        out["ivfpq"].append(r)
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
