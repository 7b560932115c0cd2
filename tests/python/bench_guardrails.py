"""llm-guard 0.3.16's scanners (what KAITO's rag-output-guardrails runs) timed on the answers kaito-rag's guardrails
benchmark scans, in one run with ours.

stdin: {"tiktoken_assets": dir, "answers": N, "sentences": K, "json_answers": [...],
        "rows": [{"name", "type", ...the scanner's settings}, ...]}
stdout: {"answers": [N prose answers], "rows": {name: {"one_us": mean microseconds per answer in one process,
         "all_per_s": answers per second with a process per core, "flagged": answers it found invalid,
         "errors": answers it raised on}}}

The prose answers are real text: K consecutive sentences each from the docstring corpus the RAG benchmark embeds
(`rag_corpus.py`, deterministic). A row of type `json` scans `json_answers` instead (answers an LLM asked for JSON
writes). llm-guard's logging goes nowhere, so its time is the scanner's own.
"""

import json
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import guardrails_reference  # noqa: E402  (llm-guard's bare packages)
import rag_corpus  # noqa: E402

_scanner = None


def make(row):
    """The llm-guard scanner for a row, called as KAITO calls it: (text) -> (text, valid, risk), or None where it
    raises (tiktoken refuses special-token text such as `<|endoftext|>`; KAITO then fails the answer)."""
    scan = _make(row)

    def guarded(text):
        try:
            return scan(text)
        except ValueError:
            return None

    return guarded


def _make(row):
    kind = row["type"]
    if kind == "ban_substrings":
        from llm_guard.output_scanners.ban_substrings import BanSubstrings

        s = BanSubstrings(row["substrings"], match_type=row["match_type"], redact=row["redact"])
        return lambda text: s.scan("", text)
    if kind == "regex":
        from llm_guard.output_scanners.regex import Regex

        s = Regex(row["patterns"], redact=row["redact"])
        return lambda text: s.scan("", text)
    if kind == "secrets":
        from llm_guard.input_scanners.secrets import Secrets

        s = Secrets(redact_mode=row["redact_mode"])
        return s.scan
    if kind == "invisible_text":
        from llm_guard.input_scanners.invisible_text import InvisibleText

        return InvisibleText().scan
    if kind == "reading_time":
        from llm_guard.output_scanners.reading_time import ReadingTime

        s = ReadingTime(row["max_time"], truncate=row["truncate"])
        return lambda text: s.scan("", text)
    if kind == "json":
        from llm_guard.output_scanners.json import JSON

        s = JSON(required_elements=row["required_elements"], repair=row["repair"])
        return lambda text: s.scan("", text)
    if kind == "token_limit":
        from llm_guard.input_scanners.token_limit import TokenLimit

        return TokenLimit(limit=row["limit"], encoding_name=row["encoding_name"]).scan
    raise SystemExit(f"no llm-guard scanner for row type {kind!r}")


def quiet(assets):
    import structlog

    guardrails_reference.use_bundled_encodings(assets)
    structlog.configure(logger_factory=lambda *a: structlog.ReturnLogger())


def init(row, assets):
    global _scanner
    quiet(assets)
    _scanner = make(row)


def scan(text):
    return _scanner(text)


def timed(fn, texts, least=1.0):
    """Mean seconds per text, over as many passes as take `least` seconds."""
    passes, start = 0, time.perf_counter()
    while True:
        for t in texts:
            fn(t)
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= least:
            return elapsed / (passes * len(texts))


def main():
    request = json.load(sys.stdin)
    assets = request["tiktoken_assets"]
    quiet(assets)
    n, k = request["answers"], request["sentences"]
    sentences = rag_corpus.corpus(n * k)
    answers = [" ".join(sentences[i * k:(i + 1) * k]) for i in range(n)]
    cores = os.cpu_count() or 1
    rows = {}
    for row in request["rows"]:
        texts = request["json_answers"] if row["type"] == "json" else answers
        scanner = make(row)
        results = [scanner(t) for t in texts]
        flagged = sum(1 for r in results if r is not None and not r[1])
        errors = sum(1 for r in results if r is None)
        one = timed(scanner, texts)
        with multiprocessing.Pool(cores, initializer=init, initargs=(row, assets)) as pool:
            pool.map(scan, texts[:cores])  # every worker has built its scanner
            passes, start = 0, time.perf_counter()
            while True:
                pool.map(scan, texts, chunksize=max(1, len(texts) // (cores * 8)))
                passes += 1
                elapsed = time.perf_counter() - start
                if elapsed >= 1.0:
                    break
        rows[row["name"]] = {"one_us": one * 1e6, "all_per_s": passes * len(texts) / elapsed,
                             "flagged": flagged, "errors": errors}
        print(f"llm-guard {row['name']}: {one * 1e6:.1f} us/answer", file=sys.stderr)
    json.dump({"answers": answers, "rows": rows}, sys.stdout)


if __name__ == "__main__":
    main()
