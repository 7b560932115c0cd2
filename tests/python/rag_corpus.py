"""Real-text corpus for the RAG benchmark: English sentences from docstrings
of Python packages on this machine, embedded with all-MiniLM-L6-v2.

    python rag_corpus.py OUT_DIR N QUERIES MODEL_DIR

Writes OUT_DIR/base.f32 (N x 384), OUT_DIR/queries.f32 (QUERIES x 384, held
out: sentences not in the base), unit-length float32 rows, and
OUT_DIR/base.txt / queries.txt (one sentence per line), then OUT_DIR/done.
The sentences come from the standard library and the torch venv's packages
(numpy, torch, transformers, sympy, networkx, ...), which every machine that
runs the benchmark has; which sentences are kept is deterministic (sorted by
their sha1), so every run embeds the same text. Nothing is downloaded.
"""

import ast
import hashlib
import os
import re
import sys
import sysconfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
WORD = re.compile(r"[A-Za-z]+")


def docstrings(path):
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError, RecursionError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def sentences(doc):
    # Prose paragraphs only: skip code examples, tables and parameter lists.
    for para in re.split(r"\n\s*\n", doc):
        lines = [l.strip() for l in para.splitlines()]
        if any(l.startswith((">>>", "...", "|", "-", "*", ":", "..", "=")) for l in lines):
            continue
        text = " ".join(lines)
        for s in SENTENCE_END.split(text):
            s = s.strip()
            words = s.split()
            if not (6 <= len(words) <= 40) or not s.endswith("."):
                continue
            letters = sum(len(w) for w in WORD.findall(s))
            if letters < 0.7 * len(s.replace(" ", "")):
                continue
            yield s


def corpus(limit):
    roots = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]]
    seen = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ("tests", "test", "__pycache__"))
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                for doc in docstrings(os.path.join(dirpath, name)):
                    for s in sentences(doc):
                        seen.add(s)
    ordered = sorted(seen, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    if len(ordered) < limit:
        sys.exit(f"only {len(ordered)} distinct sentences found, {limit} wanted")
    return ordered[:limit]


def main():
    out, n, q, model_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if os.path.exists(os.path.join(out, "done")):
        return
    os.makedirs(out, exist_ok=True)
    texts = corpus(n + q)
    base, queries = texts[:n], texts[n:]
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(model_dir, device="cpu")
    for name, rows in (("base", base), ("queries", queries)):
        vectors = model.encode(rows, batch_size=256, normalize_embeddings=True, convert_to_numpy=True,
                               show_progress_bar=False).astype(np.float32)
        vectors.tofile(os.path.join(out, f"{name}.f32"))
        with open(os.path.join(out, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(rows) + "\n")
        print(f"{name}: {len(rows)} sentences embedded", file=sys.stderr)
    open(os.path.join(out, "done"), "w").close()


if __name__ == "__main__":
    main()
