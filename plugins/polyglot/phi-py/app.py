"""The Phi preset (world `preset` of kaito:plugin@0.2.0, and of 0.1.0 as the old-contract fixture) in Python.

A port of presets-wasm/phi and the Rust SDK's catalog, sizing and runtime
modules: for the same request it must return exactly what the Rust preset
returns, so that `kaito render` prints the same bytes.
"""

import json
import math
from dataclasses import dataclass
from typing import List, Optional

import wit_world
from componentize_py_types import Err
from wit_world.exports import preset_api as api
from wit_world.imports import types

GIB = 1 << 30
DEFAULT_MAX_MODEL_LEN = 2048
WEIGHT_EXPANSION = 1.02
WEIGHT_OVERHEAD = 1.05
FIXED_RESERVE_BYTES = 2.3 * GIB
DISK_HEADROOM_GIB = 80
TCH_IMAGE_TAG = "0.1.0"
VLLM_IMAGE = "mcr.microsoft.com/aks/kaito/kaito-base:0.5.0"
HTTP_PORT = 5000
ADAPTERS_DIR = "/mnt/adapter"
TUNE_CONFIG_FILE = "/mnt/config/training_config.yaml"
TUNE_METRICS_PORT = 5000
TUNE_BACKOFF_LIMIT = 6
WEIGHTS_DIR = "/workspace/weights"
NVME_STORAGE_CLASS = "kaito-local-nvme-disk"
RUNTIME_ANNOTATION = "kaito.sh/runtime"
PERFORMANCE_MODE_ANNOTATION = "kaito.sh/performance-mode"
KAITO_TRANSFORMERS = "transformers"
KV_EVENTS_PORT = 5557
# KAITO's tool-calling chat templates by served-name prefix (only the Phi entry can match here).
KAITO_CHAT_TEMPLATES = [("phi-4-mini", "tool-chat-phi4-mini.jinja")]
RUNTIME_FIELD = f"metadata.annotations[{RUNTIME_ANNOTATION}]"


@dataclass(frozen=True)
class Spec:
    name: str
    hf_id: str
    weights_centi_gib: int
    context_length: int
    layers: int
    kv_heads: int
    head_dim: int

    def weights_bytes(self) -> int:
        return self.weights_centi_gib * GIB // 100

    def disk_bytes(self) -> int:
        return (self.weights_centi_gib // 100 + DISK_HEADROOM_GIB) * GIB

    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2

    def served_names(self) -> List[str]:
        served = self.hf_id.rsplit("/", 1)[-1].lower()
        return [served] if served == self.name else [served, self.name]


def sh_word(word: str) -> str:
    plain = all(c.isascii() and (c.isalnum() or c in "-_./=:,+@%") for c in word)
    return word if word and plain else "'" + word.replace("'", "'\\''") + "'"


def phi3_mini(name: str, hf_id: str, context_length: int) -> Spec:
    return Spec(name, hf_id, 712, context_length, 32, 32, 96)


def phi_medium(name: str, hf_id: str, weights_centi_gib: int, context_length: int) -> Spec:
    return Spec(name, hf_id, weights_centi_gib, context_length, 40, 10, 128)


MODELS = [
    phi_medium("phi-4", "microsoft/phi-4", 2731, 16384),
    Spec("phi-4-mini-instruct", "microsoft/Phi-4-mini-instruct", 715, 131072, 32, 8, 128),
    phi3_mini("phi-3-mini-4k-instruct", "microsoft/Phi-3-mini-4k-instruct", 4096),
    phi3_mini("phi-3-mini-128k-instruct", "microsoft/Phi-3-mini-128k-instruct", 131072),
    phi_medium("phi-3-medium-4k-instruct", "microsoft/Phi-3-medium-4k-instruct", 2600, 4096),
    phi_medium("phi-3-medium-128k-instruct", "microsoft/Phi-3-medium-128k-instruct", 2600, 131072),
    phi3_mini("phi-3.5-mini-instruct", "microsoft/Phi-3.5-mini-instruct", 131072),
]


def fail(kind: types.ErrorKind, field: str, message: str, hint: Optional[str] = None):
    raise Err(types.PluginError(kind, field, message, hint))


def quoted(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def model_info(m: Spec) -> api.ModelInfo:
    return api.ModelInfo(
        name=m.name,
        aliases=[],
        hf_id=m.hf_id,
        family="phi",
        architecture="Phi3ForCausalLM",
        weights_bytes=m.weights_bytes(),
        disk_bytes=m.disk_bytes(),
        context_length=m.context_length,
        bytes_per_token=m.bytes_per_token(),
        license="mit",
        runtimes=["tch", "vllm"],
        chat_template=None,
        tool_call_parser=None,
        reasoning_parser=None,
        supports_tuning=True,
        supports_multi_node=True,
        supports_lora=True,
    )


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a):
        cur = [i + 1]
        for j, cb in enumerate(b):
            cur.append(min(prev[j] + (ca != cb), prev[j + 1] + 1, cur[j] + 1))
        prev = cur
    return prev[len(b)]


def nearest(query: str, names: List[str], n: int) -> List[str]:
    q = query.lower()
    out: List[str] = []
    for _, c in sorted((edit_distance(q, c.lower()), c) for c in names):
        if not out or out[-1] != c:
            out.append(c)
    return out[:n]


def resolve(query: str, field: str = "inference.preset.name") -> Spec:
    q = query.strip().lower()
    for m in MODELS:
        if q == m.name or q == m.hf_id.lower():
            return m
    close = nearest(query, [m.name for m in MODELS], 3)
    fail(types.ErrorKind.UNKNOWN_MODEL, field, f"this plugin has no model named {quoted(query)}",
         f"closest names here: {', '.join(close)}")


def gib(x: float) -> str:
    return f"{x / GIB:.2f} GiB"


def utilization_for(gpu_model: str) -> float:
    m = gpu_model.upper().replace("NVIDIA", "")
    for c in "-_ ":
        m = m.replace(c, "")
    return 0.82 if m in ("A10", "A10G") else 0.84


@dataclass
class Sizing:
    node_count: int
    min_gpus: int
    model_bytes: int
    parallelism: api.Parallelism
    util: float


def estimate(weights: int, bpt: int, max_model_len: int, shape: types.GpuShape) -> Sizing:
    if shape.gpus_per_node == 0 or shape.gpu_memory_bytes == 0:
        fail(types.ErrorKind.INVALID_INPUT, "resource.instanceType",
             f"the target nodes report no GPUs ({shape.gpus_per_node} GPUs of {shape.gpu_memory_bytes} bytes)",
             "pick a GPU instance type, or label BYO nodes with nvidia.com/gpu.count and nvidia.com/gpu.memory")
    util = 0.84
    model_bytes = float(weights) * WEIGHT_EXPANSION
    per_gpu = float(shape.gpu_memory_bytes)
    available = per_gpu * util
    kv_bytes = float(max_model_len) * float(bpt) / float(shape.gpus_per_node)
    fixed = FIXED_RESERVE_BYTES + kv_bytes
    if available <= fixed:
        fail(types.ErrorKind.DOES_NOT_FIT, "resource.instanceType",
             f"a {shape.gpu_model} GPU offers {gib(available)} at {util * 100.0:.0f}% utilisation, not more than the "
             f"{gib(fixed)} fixed reserve (2.30 GiB runtime + {gib(kv_bytes)} KV cache for {max_model_len} tokens)",
             "choose an instance type with larger GPUs, or lower the context length (vllm.max-model-len in inference.config)")
    usable = (available - fixed) / WEIGHT_OVERHEAD
    min_gpus = math.floor(model_bytes / usable) + 1
    node_count = max(-(-min_gpus // shape.gpus_per_node), 1)
    if node_count > shape.max_nodes:
        fail(types.ErrorKind.DOES_NOT_FIT, "resource.instanceType",
             f"the model needs {gib(model_bytes)} of GPU memory ({min_gpus} GPUs with {gib(usable)} usable each), that is "
             f"{node_count} node(s) of {shape.gpus_per_node}x {shape.gpu_model}, but at most {shape.max_nodes} node(s) are available",
             "choose an instance type with more or larger GPUs, or allow more nodes")
    if node_count == 1 and model_bytes < per_gpu / 2.0:
        par = api.Parallelism(tensor=1, pipeline=1, data=shape.gpus_per_node)
    else:
        par = api.Parallelism(tensor=shape.gpus_per_node, pipeline=node_count, data=1)
    return Sizing(node_count, min_gpus, int(model_bytes), par, utilization_for(shape.gpu_model))


def choose(m: Spec, request: api.PlanRequest, shape: types.GpuShape, sizing: Sizing):
    notes: List[str] = []
    fits_one_gpu = sizing.node_count == 1 and sizing.min_gpus == 1
    if request.runtime is not None and request.runtime.strip().lower() == KAITO_TRANSFORMERS:
        if fits_one_gpu:
            notes.append(f"{RUNTIME_ANNOTATION}: {KAITO_TRANSFORMERS} is KAITO's Hugging Face transformers runtime; "
                         "it is served here by the tch runtime (kaito-inference)")
            runtime = "tch"
        else:
            notes.append(f"{RUNTIME_ANNOTATION}: {KAITO_TRANSFORMERS} asked, served by vllm: the tch runtime cannot serve "
                         f"{m.name} here ({sizing.min_gpus} GPU(s) on {sizing.node_count} node(s), architecture Phi3ForCausalLM)")
            runtime = "vllm"
    elif request.runtime is not None:
        runtime = request.runtime.strip().lower()
        if runtime not in ("tch", "vllm"):
            fail(types.ErrorKind.UNSUPPORTED, RUNTIME_FIELD, f"runtime {quoted(request.runtime)} is not available for {m.name}",
                 f"use one of: tch, vllm, or {KAITO_TRANSFORMERS} (KAITO's name, served by tch)")
        if runtime == "tch" and not fits_one_gpu:
            fail(types.ErrorKind.UNSUPPORTED, RUNTIME_FIELD,
                 f"the tch runtime serves a model from one GPU, but {m.name} needs {sizing.min_gpus} GPU(s) on "
                 f"{sizing.node_count} node(s) of {shape.gpu_model}",
                 f"set {RUNTIME_ANNOTATION}: vllm, or pick an instance type with a larger GPU")
    elif fits_one_gpu:
        runtime = "tch"
    else:
        notes.append(f"runtime vllm chosen: {m.name} needs {sizing.min_gpus} GPU(s) on {sizing.node_count} node(s) "
                     "and the tch runtime serves from one GPU")
        runtime = "vllm"
    if runtime == "vllm":
        for i, a in enumerate(request.adapters):
            if a.strength is not None and a.strength.strip() != "":
                fail(types.ErrorKind.UNSUPPORTED, f"inference.adapters[{i}].strength",
                     f"{m.name} is served by vllm, which applies adapters at full strength",
                     f"remove the strength, or set {RUNTIME_ANNOTATION}: tch (which scales adapters) on an instance "
                     "type where the model fits one GPU")
    if runtime == "tch" and shape.gpus_per_node > 1:
        notes.append(f"the tch runtime uses one of the {shape.gpus_per_node} GPUs per node; "
                     f"set {RUNTIME_ANNOTATION}: vllm for data parallelism")
    return runtime, notes


def startup_seconds(weights: int) -> int:
    return min(max(900 + 18 * (-(-weights // GIB)), 1800), 10800)


def http_probe(initial_delay: int, failure_threshold: int) -> api.Probe:
    return api.Probe(api.ProbeAction_HttpGet(api.HttpGetAction("/health", HTTP_PORT)), initial_delay, 10, 5, failure_threshold)


def workload(runtime: str, m: Spec, request: api.PlanRequest, shape: types.GpuShape, sizing: Sizing) -> api.WorkloadPlan:
    env: List[api.EnvVar] = []
    if request.model_access_secret is not None:
        env.append(api.EnvVar("HF_TOKEN", api.EnvSource_SecretKey(api.SecretKeyRef(request.model_access_secret, "HF_TOKEN", True))))
    ports = [api.Port("http", HTTP_PORT, 80)]
    weights_source = (api.VolumeSource_Persistent(api.PersistentClaim(NVME_STORAGE_CLASS, m.disk_bytes()))
                      if shape.nvme else api.VolumeSource_EmptyDir(None))
    volumes = [
        api.Volume("dshm", "/dev/shm", False, api.VolumeSource_Memory(None)),
        api.Volume("weights", WEIGHTS_DIR, False, weights_source),
    ]
    if request.config_map is not None:
        volumes.append(api.Volume("config", "/mnt/config", True, api.VolumeSource_ConfigMap(request.config_map)))
    startup_threshold = startup_seconds(m.weights_bytes()) // 10
    if runtime == "tch":
        args = (["--model", m.hf_id, "--served-model-name"] + m.served_names()
                + ["--host", "0.0.0.0", "--port", str(HTTP_PORT), "--download-dir", WEIGHTS_DIR, "--dtype", "auto",
                   "--device", "auto"])
        if request.max_model_len is not None:
            args += ["--max-model-len", str(request.max_model_len)]
        if request.adapters:
            args += ["--enable-lora", "--lora-modules"]
            for a in request.adapters:
                path = f"{ADAPTERS_DIR}/{a.name}"
                if a.strength is not None:
                    args.append(f'{{"name":"{a.name}","path":"{path}","strength":{a.strength.strip()}}}')
                else:
                    args.append(f"{a.name}={path}")
        image = f"{request.image_registry.rstrip('/')}/kaito-inference:{TCH_IMAGE_TAG}"
        command = ["kaito-inference"]
        probes = (http_probe(0, startup_threshold), http_probe(30, 3), http_probe(0, 3))
    else:
        served = m.served_names()[0]
        env.append(api.EnvVar("VLLM_USE_FLASHINFER_SAMPLER", api.EnvSource_Literal("0")))
        env.append(api.EnvVar("VLLM_USE_DEEP_GEMM", api.EnvSource_Literal("0")))
        par = sizing.parallelism
        vllm = [
            f"--model={m.hf_id}",
            f"--download-dir={WEIGHTS_DIR}",
            f"--port={HTTP_PORT}",
            f"--max-model-len={request.max_model_len}" if request.max_model_len is not None else "--max-model-len=auto",
            f"--gpu-memory-utilization={sizing.util}",
            f"--tensor-parallel-size={par.tensor}",
            "--dtype=bfloat16",
            "--trust-remote-code",
            "--compilation-config.pass_config.fuse_allreduce_rms=False",
            '--kv-events-config={"enable_kv_cache_events":true}',
        ]
        ports.append(api.Port("kv-events", KV_EVENTS_PORT, KV_EVENTS_PORT))
        if par.data > 1 or par.pipeline > 1:
            vllm.append("--kaito-kv-cache-cpu-memory-utilization=0")
        mode = next((kv.value.strip() for kv in request.annotations if kv.key == PERFORMANCE_MODE_ANNOTATION), "")
        if mode not in ("", "balanced"):
            vllm.append(f"--performance-mode={mode}")
        vllm += ["--served-model-name"] + m.served_names()
        if par.data > 1:
            vllm.append(f"--data-parallel-size={par.data}")
        if par.pipeline > 1:
            vllm += [f"--pipeline-parallel-size={par.pipeline}", "--distributed-executor-backend=ray"]
        if request.config_map is not None:
            vllm.append("--kaito-config-file=/mnt/config/inference_config.yaml")
        if request.adapters:
            vllm += ["--enable-lora", "--lora-modules"] + [f"{a.name}={ADAPTERS_DIR}/{a.name}" for a in request.adapters]
        template = next((t for prefix, t in KAITO_CHAT_TEMPLATES if served.startswith(prefix)), None)
        if template is not None:
            vllm.append(f"--chat-template=/workspace/chat_templates/{template}")
        image = VLLM_IMAGE
        if sizing.node_count > 1:
            env.append(api.EnvVar("POD_INDEX", api.EnvSource_FieldPath("metadata.labels['apps.kubernetes.io/pod-index']")))
            ports += [api.Port("ray", 6379, 6379), api.Port("dashboard", 8265, 8265)]
            leader = f"{request.workspace}-0.{request.workspace}-headless.{request.namespace}.svc.cluster.local"
            script = (f'if [ "$POD_INDEX" = "0" ]; then ray start --head --port=6379 && exec python3 '
                      f'/workspace/vllm/inference_api.py {" ".join(sh_word(w) for w in vllm)}; else exec ray start --address={leader}:6379 --block; fi')
            check = (f'if [ "$POD_INDEX" = "0" ]; then python3 -c \'import urllib.request; '
                     f'urllib.request.urlopen("http://localhost:{HTTP_PORT}/health", timeout=5)\'; '
                     f'else ray health-check --address {leader}:6379; fi')

            def exec_probe(initial_delay: int, failure_threshold: int) -> api.Probe:
                return api.Probe(api.ProbeAction_Exec(["/bin/sh", "-c", check]), initial_delay, 10, 10, failure_threshold)

            command, args = ["/bin/sh", "-c"], [script]
            probes = (exec_probe(0, startup_threshold), exec_probe(30, 3), exec_probe(0, 3))
        else:
            command, args = ["python3", "/workspace/vllm/inference_api.py"] + vllm, []
            probes = (http_probe(0, startup_threshold), http_probe(30, 3), http_probe(0, 3))
    return api.WorkloadPlan(
        image=image, command=command, args=args, env=env, ports=ports,
        startup_probe=probes[0], readiness_probe=probes[1], liveness_probe=probes[2],
        volumes=volumes, gpus_per_pod=shape.gpus_per_node, labels=[],
        privileged=False, add_capabilities=[], host_network=False, host_pid=False, host_ipc=False,
    )


class PresetApi(wit_world.exports.PresetApi):
    def info(self) -> types.PluginInfo:
        return types.PluginInfo("preset-phi", "0.1.0", "Microsoft Phi-3, Phi-3.5 and Phi-4 models (Python port)")

    def models(self) -> List[api.ModelInfo]:
        return [model_info(m) for m in MODELS]

    def plan(self, request: api.PlanRequest, shape: types.GpuShape) -> api.PresetPlan:
        m = resolve(request.model)
        if request.workspace == "":
            fail(types.ErrorKind.INVALID_INPUT, "metadata.name", "the Workspace has no name")
        if request.min_nodes == 0:
            fail(types.ErrorKind.INVALID_INPUT, "resource.count", "node count must be at least 1")
        if shape.max_nodes == 0:
            fail(types.ErrorKind.INVALID_INPUT, "resource.instanceType", "no nodes are available for this Workspace")
        n = request.max_model_len
        if n is not None and (n == 0 or n > m.context_length):
            fail(types.ErrorKind.INVALID_INPUT, "inference.config",
                 f"max-model-len {n} is outside 1..={m.context_length} for {m.name}",
                 f"set vllm.max-model-len to at most {m.context_length}")
        for i, a in enumerate(request.adapters):
            if a.image is None or a.image.strip() == "":
                fail(types.ErrorKind.UNSUPPORTED, f"inference.adapters[{i}].source.volumeSource",
                     "adapters from a volume are not rendered yet",
                     "push the adapter directory with `kaito models push DIR REF` and name REF in source.image")
            if a.strength is not None:
                try:
                    ok = 0.0 <= float(a.strength.strip()) <= 1.0
                except ValueError:
                    ok = False
                if not ok:
                    fail(types.ErrorKind.INVALID_INPUT, f"inference.adapters[{i}].strength",
                         "the strength must be a number between 0 and 1")
        sizing = estimate(m.weights_bytes(), m.bytes_per_token(), n if n is not None else DEFAULT_MAX_MODEL_LEN, shape)
        runtime, notes = choose(m, request, shape, sizing)
        if runtime == "tch":
            sizing.parallelism = api.Parallelism(1, 1, 1)
        return api.PresetPlan(
            runtime=runtime,
            notes=notes,
            resources=api.ResourcePlan(sizing.node_count, shape.gpus_per_node, sizing.model_bytes, m.disk_bytes(),
                                       sizing.parallelism),
            workload=workload(runtime, m, request, shape, sizing),
        )

    def tune(self, request: api.TuneRequest, shape: types.GpuShape) -> api.TunePlan:
        # Every Phi model tunes, and all are Phi3ForCausalLM, which kaito-tune trains; none is gated.
        m = resolve(request.model, "tuning.preset.name")
        if request.method == "qlora":
            fail(types.ErrorKind.UNSUPPORTED, "tuning.method",
                 "QLoRA (4-bit NF4 base weights) is not implemented by kaito-tune", "set tuning.method to lora")
        if request.method != "lora":
            fail(types.ErrorKind.INVALID_INPUT, "tuning.method", f"{quoted(request.method)} is not lora or qlora")
        weights = m.weights_bytes()
        need = 2 * weights + weights // 5  # float32 weights, plus adapter, optimiser state and activations
        if need > shape.gpu_memory_bytes:
            fail(types.ErrorKind.DOES_NOT_FIT, "resource.instanceType",
                 f"LoRA training of {m.name} needs about {need >> 20} MiB on one GPU; "
                 f"a {shape.gpu_model} has {shape.gpu_memory_bytes >> 20} MiB",
                 "choose an instance type with more memory per GPU")
        notes = []
        if shape.gpus_per_node > 1:
            notes.append(f"kaito-tune trains on one GPU; {shape.gpus_per_node - 1} of the node's "
                         f"{shape.gpus_per_node} GPUs stay free")
        args = ["--model", m.hf_id, "--download-dir", WEIGHTS_DIR]
        volumes = [
            api.Volume("dshm", "/dev/shm", False, api.VolumeSource_Memory(None)),
            api.Volume("weights", WEIGHTS_DIR, False, api.VolumeSource_EmptyDir(None)),
        ]
        if request.config_map is not None:
            args += ["--config", TUNE_CONFIG_FILE]
            volumes.append(api.Volume("config", "/mnt/config", True, api.VolumeSource_ConfigMap(request.config_map)))
        source = request.input
        if isinstance(source, api.TuneInput_Urls):
            for url in source.value:
                args += ["--data", url]
        elif isinstance(source, api.TuneInput_Image):
            args += ["--data", "oci://" + source.value]
        else:
            args += ["--data", source.value]
        out = request.output
        if isinstance(out, api.TuneOutput_Directory):
            args += ["--output", out.value]
        else:
            args += ["--output", request.scratch_dir, "--push", "oci://" + out.value]
        for config in request.registry_configs:
            args += ["--registry-config", config]
        args += ["--metrics-port", str(TUNE_METRICS_PORT)]
        env: List[api.EnvVar] = []
        if request.model_access_secret is not None:
            env.append(api.EnvVar("HF_TOKEN", api.EnvSource_SecretKey(
                api.SecretKeyRef(request.model_access_secret, "HF_TOKEN", True))))
        return api.TunePlan(
            runtime="tch",
            notes=notes,
            resources=api.ResourcePlan(1, shape.gpus_per_node, need, m.disk_bytes(), api.Parallelism(1, 1, 1)),
            workload=api.WorkloadPlan(
                image=f"{request.image_registry.rstrip('/')}/kaito-inference:{TCH_IMAGE_TAG}",
                command=["kaito-tune"], args=args, env=env,
                ports=[api.Port("metrics", TUNE_METRICS_PORT, None)],
                startup_probe=None, readiness_probe=None, liveness_probe=None,
                volumes=volumes, gpus_per_pod=1, labels=[],
                privileged=False, add_capabilities=[], host_network=False, host_pid=False, host_ipc=False,
            ),
            backoff_limit=TUNE_BACKOFF_LIMIT,
        )
