"""sentence-transformers reference for the RAG embedding parity test.

    python embed_reference.py MODEL_DIR < sentences.json

Reads a JSON list of sentences on stdin; prints a JSON list of their
embeddings (normalised as the model's modules say), f32 on CPU.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from sentence_transformers import SentenceTransformer


def main():
    torch.set_num_threads(1)
    model = SentenceTransformer(sys.argv[1], device="cpu")
    sentences = json.load(sys.stdin)
    vectors = model.encode(sentences, batch_size=32, convert_to_numpy=True)
    json.dump([[float(x) for x in v] for v in vectors], sys.stdout)


if __name__ == "__main__":
    main()
