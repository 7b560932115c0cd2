"""llm-guard 0.3.16's own JSON and TokenLimit scanners (what KAITO's rag-output-guardrails runs) on the cases
kaito-rag's guardrail reference test sends: stdin {"tiktoken_assets": dir, "cases": [...]}, stdout
[[text, valid], ...] in case order.

llm-guard is installed without its dependencies (its pins of torch and transformers clash with ours; these two
scanners need only regex, json_repair, tiktoken and structlog), so its package __init__ files, which import every
scanner and their models, are bypassed: the two scanner modules are loaded from llm-guard's files as they are.
tiktoken cannot download OpenAI's encodings here, so its download reads the .tiktoken files tiktoken-rs bundles
(the directory passed in); tiktoken still checks each against OpenAI's published SHA-256.
"""

import importlib.util
import json
import os
import sys
import types

import tiktoken.load


def use_bundled_encodings(assets: str) -> None:
    """tiktoken reads OpenAI's encodings from `assets` (tiktoken-rs's bundled files) instead of downloading."""

    def bundled(blobpath: str) -> bytes:
        with open(os.path.join(assets, os.path.basename(blobpath)), "rb") as f:
            return f.read()

    tiktoken.load.read_file = bundled
    os.environ["TIKTOKEN_CACHE_DIR"] = ""


# llm-guard's packages without their __init__ files, which import every scanner and its models.
_root = importlib.util.find_spec("llm_guard").submodule_search_locations[0]
for _name, _sub in [("llm_guard", ""), ("llm_guard.output_scanners", "output_scanners"),
                    ("llm_guard.input_scanners", "input_scanners")]:
    _package = types.ModuleType(_name)
    _package.__path__ = [os.path.join(_root, _sub)]
    sys.modules.setdefault(_name, _package)


def main():
    from llm_guard.input_scanners.token_limit import TokenLimit
    from llm_guard.output_scanners.json import JSON
    import structlog

    request = json.load(sys.stdin)
    use_bundled_encodings(request["tiktoken_assets"])
    # llm-guard logs every invalid candidate; stdout carries the answer.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))

    out = []
    for case in request["cases"]:
        if case["scanner"] == "json":
            scanner = JSON(required_elements=case["required"], repair=case["repair"])
            text, valid, _ = scanner.scan("", case["text"])
        else:
            scanner = TokenLimit(limit=case["limit"], encoding_name=case["encoding"])
            text, valid, _ = scanner.scan(case["text"])
        out.append([text, valid])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
