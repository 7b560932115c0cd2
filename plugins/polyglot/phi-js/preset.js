// The Phi preset (kaito:plugin@0.2.0, world `preset`) in JavaScript.
//
// A port of presets-wasm/phi and the Rust SDK's catalog, sizing and runtime
// modules: for the same request it must return exactly what the Rust preset
// returns, so `kaito render` prints the same bytes. With the QuickJS backend
// u64 is a Number (all values here are far below 2^53) and a missing option is null.

const GIB = 1073741824;
const DEFAULT_MAX_MODEL_LEN = 2048;
const WEIGHT_EXPANSION = 1.02;
const WEIGHT_OVERHEAD = 1.05;
const FIXED_RESERVE_BYTES = 2.3 * GIB;
const DISK_HEADROOM_GIB = 80;
const TCH_IMAGE_TAG = "0.1.0";
const VLLM_IMAGE = "mcr.microsoft.com/aks/kaito/kaito-base:0.5.0";
const HTTP_PORT = 5000;
const ADAPTERS_DIR = "/mnt/adapter";
const TUNE_CONFIG_FILE = "/mnt/config/training_config.yaml";
const TUNE_METRICS_PORT = 5000;
const TUNE_BACKOFF_LIMIT = 6;
const WEIGHTS_DIR = "/workspace/weights";
const NVME_STORAGE_CLASS = "kaito-local-nvme-disk";
const RUNTIME_ANNOTATION = "kaito.sh/runtime";
const RUNTIME_FIELD = `metadata.annotations[${RUNTIME_ANNOTATION}]`;
const PERFORMANCE_MODE_ANNOTATION = "kaito.sh/performance-mode";
const KAITO_TRANSFORMERS = "transformers";
const KV_EVENTS_PORT = 5557;
// KAITO's tool-calling chat templates by served-name prefix (only the Phi entry can match here).
const KAITO_CHAT_TEMPLATES = [["phi-4-mini", "tool-chat-phi4-mini.jinja"]];

function servedNames(m) {
  const served = m.hfId.split("/").pop().toLowerCase();
  return served === m.name ? [served] : [served, m.name];
}

function shWord(word) {
  return word !== "" && /^[A-Za-z0-9_.\/=:,+@%-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`;
}
const TCH_ARCHITECTURES = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Phi3ForCausalLM"];

function phi3Mini(name, hfId, contextLength) {
  return {
    name, hfId, contextLength,
    weightsCentiGib: 712,
    kv: { layers: 32, kvHeads: 32, headDim: 96 },
  };
}

function phiMedium(name, hfId, weightsCentiGib, contextLength) {
  return { ...phi3Mini(name, hfId, contextLength), weightsCentiGib, kv: { layers: 40, kvHeads: 10, headDim: 128 } };
}

const MODELS = [
  phiMedium("phi-4", "microsoft/phi-4", 2731, 16384),
  { ...phi3Mini("phi-4-mini-instruct", "microsoft/Phi-4-mini-instruct", 131072), weightsCentiGib: 715, kv: { layers: 32, kvHeads: 8, headDim: 128 } },
  phi3Mini("phi-3-mini-4k-instruct", "microsoft/Phi-3-mini-4k-instruct", 4096),
  phi3Mini("phi-3-mini-128k-instruct", "microsoft/Phi-3-mini-128k-instruct", 131072),
  phiMedium("phi-3-medium-4k-instruct", "microsoft/Phi-3-medium-4k-instruct", 2600, 4096),
  phiMedium("phi-3-medium-128k-instruct", "microsoft/Phi-3-medium-128k-instruct", 2600, 131072),
  phi3Mini("phi-3.5-mini-instruct", "microsoft/Phi-3.5-mini-instruct", 131072),
];

// Integer division, exactly as the Rust SDK does it.
const idiv = (a, b) => (a - (a % b)) / b;
const weightsBytes = (m) => idiv(m.weightsCentiGib * GIB, 100);
const diskBytes = (m) => (idiv(m.weightsCentiGib, 100) + DISK_HEADROOM_GIB) * GIB;
const bytesPerToken = (m) => 2 * m.kv.layers * m.kv.kvHeads * m.kv.headDim * 2;

function info(m) {
  return {
    name: m.name,
    aliases: [],
    hfId: m.hfId,
    family: "phi",
    architecture: "Phi3ForCausalLM",
    weightsBytes: weightsBytes(m),
    diskBytes: diskBytes(m),
    contextLength: m.contextLength,
    bytesPerToken: bytesPerToken(m),
    license: "mit",
    runtimes: ["tch", "vllm"],
    chatTemplate: null,
    toolCallParser: null,
    reasoningParser: null,
    supportsTuning: true,
    supportsMultiNode: true,
    supportsLora: true,
  };
}

// A plugin-error; thrown values become the `err` case of `plan`'s result.
function pluginError(kind, field, message, hint) {
  return { kind, field, message, hint };
}

function editDistance(a, b) {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 0; i < a.length; i++) {
    const cur = [i + 1];
    for (let j = 0; j < b.length; j++) {
      const cost = a[i] === b[j] ? 0 : 1;
      cur.push(Math.min(prev[j] + cost, prev[j + 1] + 1, cur[j] + 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

function nearest(query, names, n) {
  const q = query.toLowerCase();
  const scored = names.map((c) => [editDistance(q, c.toLowerCase()), c]);
  scored.sort((x, y) => (x[0] - y[0]) || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0));
  const out = [];
  for (const [, c] of scored) {
    if (out[out.length - 1] !== c) out.push(c);
  }
  return out.slice(0, n);
}

function resolve(query, field = "inference.preset.name") {
  const q = query.trim().toLowerCase();
  const found = MODELS.find((m) => q === m.name || q === m.hfId.toLowerCase());
  if (found) return found;
  const close = nearest(query, MODELS.map((m) => m.name), 3);
  throw pluginError("unknown-model", field, `this plugin has no model named ${JSON.stringify(query)}`,
    `closest names here: ${close.join(", ")}`);
}

const gib = (bytes) => `${(bytes / GIB).toFixed(2)} GiB`;

function utilizationFor(gpuModel) {
  const m = gpuModel.toUpperCase().replaceAll("NVIDIA", "").replace(/[-_ ]/g, "");
  return m === "A10" || m === "A10G" ? 0.82 : 0.84;
}

function estimate(weights, bpt, maxModelLen, shape) {
  const gpuMemory = shape.gpuMemoryBytes;
  if (shape.gpusPerNode === 0 || gpuMemory === 0) {
    throw pluginError("invalid-input", "resource.instanceType",
      `the target nodes report no GPUs (${shape.gpusPerNode} GPUs of ${shape.gpuMemoryBytes} bytes)`,
      "pick a GPU instance type, or label BYO nodes with nvidia.com/gpu.count and nvidia.com/gpu.memory");
  }
  const util = 0.84;
  const modelBytes = weights * WEIGHT_EXPANSION;
  const perGpu = gpuMemory;
  const available = perGpu * util;
  const kvBytes = maxModelLen * bpt / shape.gpusPerNode;
  const fixed = FIXED_RESERVE_BYTES + kvBytes;
  if (available <= fixed) {
    throw pluginError("does-not-fit", "resource.instanceType",
      `a ${shape.gpuModel} GPU offers ${gib(available)} at ${(util * 100).toFixed(0)}% utilisation, not more than the ${gib(fixed)} fixed reserve (2.30 GiB runtime + ${gib(kvBytes)} KV cache for ${maxModelLen} tokens)`,
      "choose an instance type with larger GPUs, or lower the context length (vllm.max-model-len in inference.config)");
  }
  const usablePerGpu = (available - fixed) / WEIGHT_OVERHEAD;
  const minGpus = Math.floor(modelBytes / usablePerGpu) + 1;
  const nodeCount = Math.max(Math.ceil(minGpus / shape.gpusPerNode), 1);
  if (nodeCount > shape.maxNodes) {
    throw pluginError("does-not-fit", "resource.instanceType",
      `the model needs ${gib(modelBytes)} of GPU memory (${minGpus} GPUs with ${gib(usablePerGpu)} usable each), that is ${nodeCount} node(s) of ${shape.gpusPerNode}x ${shape.gpuModel}, but at most ${shape.maxNodes} node(s) are available`,
      "choose an instance type with more or larger GPUs, or allow more nodes");
  }
  const parallelism = nodeCount === 1 && modelBytes < perGpu / 2
    ? { tensor: 1, pipeline: 1, data: shape.gpusPerNode }
    : { tensor: shape.gpusPerNode, pipeline: nodeCount, data: 1 };
  return { nodeCount, minGpus, modelBytes: Math.floor(modelBytes), parallelism, util: utilizationFor(shape.gpuModel) };
}

function choose(m, request, shape, sizing) {
  const notes = [];
  const fitsOneGpu = sizing.nodeCount === 1 && sizing.minGpus === 1;
  let runtime;
  if (request.runtime != null && request.runtime.trim().toLowerCase() === KAITO_TRANSFORMERS) {
    if (fitsOneGpu) {
      notes.push(`${RUNTIME_ANNOTATION}: ${KAITO_TRANSFORMERS} is KAITO's Hugging Face transformers runtime; it is served here by the tch runtime (kaito-inference)`);
      runtime = "tch";
    } else {
      notes.push(`${RUNTIME_ANNOTATION}: ${KAITO_TRANSFORMERS} asked, served by vllm: the tch runtime cannot serve ${m.name} here (${sizing.minGpus} GPU(s) on ${sizing.nodeCount} node(s), architecture Phi3ForCausalLM)`);
      runtime = "vllm";
    }
  } else if (request.runtime != null) {
    const asked = request.runtime.trim().toLowerCase();
    if (asked !== "tch" && asked !== "vllm") {
      throw pluginError("unsupported", RUNTIME_FIELD, `runtime ${JSON.stringify(request.runtime)} is not available for ${m.name}`, `use one of: tch, vllm, or ${KAITO_TRANSFORMERS} (KAITO's name, served by tch)`);
    }
    if (asked === "tch" && !fitsOneGpu) {
      throw pluginError("unsupported", RUNTIME_FIELD,
        `the tch runtime serves a model from one GPU, but ${m.name} needs ${sizing.minGpus} GPU(s) on ${sizing.nodeCount} node(s) of ${shape.gpuModel}`,
        `set ${RUNTIME_ANNOTATION}: vllm, or pick an instance type with a larger GPU`);
    }
    runtime = asked;
  } else if (fitsOneGpu) {
    runtime = "tch";
  } else {
    notes.push(`runtime vllm chosen: ${m.name} needs ${sizing.minGpus} GPU(s) on ${sizing.nodeCount} node(s) and the tch runtime serves from one GPU`);
    runtime = "vllm";
  }
  if (runtime === "vllm") {
    request.adapters.forEach((a, i) => {
      if (a.strength != null && a.strength.trim() !== "") {
        throw pluginError("unsupported", `inference.adapters[${i}].strength`, `${m.name} is served by vllm, which applies adapters at full strength`,
          `remove the strength, or set ${RUNTIME_ANNOTATION}: tch (which scales adapters) on an instance type where the model fits one GPU`);
      }
    });
  }
  if (runtime === "tch" && shape.gpusPerNode > 1) {
    notes.push(`the tch runtime uses one of the ${shape.gpusPerNode} GPUs per node; set ${RUNTIME_ANNOTATION}: vllm for data parallelism`);
  }
  return { runtime, notes };
}

function startupSeconds(weights) {
  const gibs = Math.ceil(weights / GIB);
  return Math.min(Math.max(900 + 18 * gibs, 1800), 10800);
}

const httpProbe = (initialDelaySeconds, failureThreshold) => ({
  action: { tag: "http-get", val: { path: "/health", port: HTTP_PORT } },
  initialDelaySeconds, periodSeconds: 10, timeoutSeconds: 5, failureThreshold,
});

function workload(runtime, m, request, shape, sizing) {
  const multiNode = sizing.nodeCount > 1;
  const env = [];
  if (request.modelAccessSecret != null) {
    env.push({ name: "HF_TOKEN", value: { tag: "secret-key", val: { name: request.modelAccessSecret, key: "HF_TOKEN", optional: true } } });
  }
  const ports = [{ name: "http", containerPort: HTTP_PORT, servicePort: 80 }];
  const volumes = [
    { name: "dshm", mountPath: "/dev/shm", readOnly: false, source: { tag: "memory", val: null } },
    {
      name: "weights", mountPath: WEIGHTS_DIR, readOnly: false,
      source: shape.nvme
        ? { tag: "persistent", val: { storageClass: NVME_STORAGE_CLASS, sizeBytes: diskBytes(m) } }
        : { tag: "empty-dir", val: null },
    },
  ];
  if (request.configMap != null) {
    volumes.push({ name: "config", mountPath: "/mnt/config", readOnly: true, source: { tag: "config-map", val: request.configMap } });
  }
  const startupThreshold = Math.floor(startupSeconds(weightsBytes(m)) / 10);
  let image, command, args, startup, readiness, liveness;
  if (runtime === "tch") {
    args = ["--model", m.hfId, "--served-model-name", ...servedNames(m), "--host", "0.0.0.0", "--port", String(HTTP_PORT),
      "--download-dir", WEIGHTS_DIR, "--dtype", "auto", "--device", "auto"];
    if (request.maxModelLen != null) args.push("--max-model-len", String(request.maxModelLen));
    if (request.adapters.length > 0) {
      args.push("--enable-lora", "--lora-modules");
      for (const a of request.adapters) {
        const path = `${ADAPTERS_DIR}/${a.name}`;
        args.push(a.strength != null ? `{"name":"${a.name}","path":"${path}","strength":${a.strength.trim()}}` : `${a.name}=${path}`);
      }
    }
    image = `${request.imageRegistry.replace(/\/+$/, "")}/kaito-inference:${TCH_IMAGE_TAG}`;
    command = ["kaito-inference"];
    [startup, readiness, liveness] = [httpProbe(0, startupThreshold), httpProbe(30, 3), httpProbe(0, 3)];
  } else {
    const served = servedNames(m)[0];
    env.push({ name: "VLLM_USE_FLASHINFER_SAMPLER", value: { tag: "literal", val: "0" } });
    env.push({ name: "VLLM_USE_DEEP_GEMM", value: { tag: "literal", val: "0" } });
    const vllm = [
      `--model=${m.hfId}`,
      `--download-dir=${WEIGHTS_DIR}`,
      `--port=${HTTP_PORT}`,
      request.maxModelLen != null ? `--max-model-len=${request.maxModelLen}` : "--max-model-len=auto",
      `--gpu-memory-utilization=${sizing.util}`,
      `--tensor-parallel-size=${sizing.parallelism.tensor}`,
      "--dtype=bfloat16",
      "--trust-remote-code",
      "--compilation-config.pass_config.fuse_allreduce_rms=False",
      '--kv-events-config={"enable_kv_cache_events":true}',
    ];
    ports.push({ name: "kv-events", containerPort: KV_EVENTS_PORT, servicePort: KV_EVENTS_PORT });
    if (sizing.parallelism.data > 1 || sizing.parallelism.pipeline > 1) vllm.push("--kaito-kv-cache-cpu-memory-utilization=0");
    const modeKv = request.annotations.find((kv) => kv.key === PERFORMANCE_MODE_ANNOTATION);
    const mode = modeKv ? modeKv.value.trim() : "";
    if (mode !== "" && mode !== "balanced") vllm.push(`--performance-mode=${mode}`);
    vllm.push("--served-model-name", ...servedNames(m));
    if (sizing.parallelism.data > 1) vllm.push(`--data-parallel-size=${sizing.parallelism.data}`);
    if (sizing.parallelism.pipeline > 1) {
      vllm.push(`--pipeline-parallel-size=${sizing.parallelism.pipeline}`, "--distributed-executor-backend=ray");
    }
    if (request.configMap != null) vllm.push("--kaito-config-file=/mnt/config/inference_config.yaml");
    if (request.adapters.length > 0) {
      vllm.push("--enable-lora", "--lora-modules", ...request.adapters.map((a) => `${a.name}=${ADAPTERS_DIR}/${a.name}`));
    }
    const template = KAITO_CHAT_TEMPLATES.find(([prefix]) => served.startsWith(prefix));
    if (template) vllm.push(`--chat-template=/workspace/chat_templates/${template[1]}`);
    image = VLLM_IMAGE;
    if (multiNode) {
      env.push({ name: "POD_INDEX", value: { tag: "field-path", val: "metadata.labels['apps.kubernetes.io/pod-index']" } });
      ports.push({ name: "ray", containerPort: 6379, servicePort: 6379 }, { name: "dashboard", containerPort: 8265, servicePort: 8265 });
      const leader = `${request.workspace}-0.${request.workspace}-headless.${request.namespace}.svc.cluster.local`;
      const script = `if [ "$POD_INDEX" = "0" ]; then ray start --head --port=6379 && exec python3 /workspace/vllm/inference_api.py ${vllm.map(shWord).join(" ")}; else exec ray start --address=${leader}:6379 --block; fi`;
      const check = `if [ "$POD_INDEX" = "0" ]; then python3 -c 'import urllib.request; urllib.request.urlopen("http://localhost:${HTTP_PORT}/health", timeout=5)'; else ray health-check --address ${leader}:6379; fi`;
      const exec = (initialDelaySeconds, failureThreshold) => ({
        action: { tag: "exec", val: ["/bin/sh", "-c", check] },
        initialDelaySeconds, periodSeconds: 10, timeoutSeconds: 10, failureThreshold,
      });
      command = ["/bin/sh", "-c"];
      args = [script];
      [startup, readiness, liveness] = [exec(0, startupThreshold), exec(30, 3), exec(0, 3)];
    } else {
      command = ["python3", "/workspace/vllm/inference_api.py", ...vllm];
      args = [];
      [startup, readiness, liveness] = [httpProbe(0, startupThreshold), httpProbe(30, 3), httpProbe(0, 3)];
    }
  }
  return {
    image, command, args, env, ports,
    startupProbe: startup, readinessProbe: readiness, livenessProbe: liveness,
    volumes,
    gpusPerPod: shape.gpusPerNode,
    labels: [],
    privileged: false, addCapabilities: [], hostNetwork: false, hostPid: false, hostIpc: false,
  };
}

function plan(request, shape) {
  const m = resolve(request.model);
  if (request.workspace === "") throw pluginError("invalid-input", "metadata.name", "the Workspace has no name", null);
  if (request.minNodes === 0) throw pluginError("invalid-input", "resource.count", "node count must be at least 1", null);
  if (shape.maxNodes === 0) throw pluginError("invalid-input", "resource.instanceType", "no nodes are available for this Workspace", null);
  const len = request.maxModelLen;
  if (len != null && (len === 0 || len > m.contextLength)) {
    throw pluginError("invalid-input", "inference.config", `max-model-len ${len} is outside 1..=${m.contextLength} for ${m.name}`,
      `set vllm.max-model-len to at most ${m.contextLength}`);
  }
  request.adapters.forEach((a, i) => {
    if (a.image == null || a.image.trim() === "") {
      throw pluginError("unsupported", `inference.adapters[${i}].source.volumeSource`, "adapters from a volume are not rendered yet",
        "push the adapter directory with `kaito models push DIR REF` and name REF in source.image");
    }
    if (a.strength != null) {
      const text = a.strength.trim();
      const v = Number(text);
      if (text === "" || !Number.isFinite(v) || v < 0 || v > 1) {
        throw pluginError("invalid-input", `inference.adapters[${i}].strength`, "the strength must be a number between 0 and 1", null);
      }
    }
  });
  const sizing = estimate(weightsBytes(m), bytesPerToken(m), len ?? DEFAULT_MAX_MODEL_LEN, shape);
  const { runtime, notes } = choose(m, request, shape, sizing);
  if (runtime === "tch") sizing.parallelism = { tensor: 1, pipeline: 1, data: 1 };
  return {
    runtime,
    notes,
    resources: {
      nodeCount: sizing.nodeCount,
      gpusPerNode: shape.gpusPerNode,
      gpuMemoryBytes: sizing.modelBytes,
      diskBytes: diskBytes(m),
      parallelism: sizing.parallelism,
    },
    workload: workload(runtime, m, request, shape, sizing),
  };
}

// Every Phi model tunes, and all are Phi3ForCausalLM, which kaito-tune trains; none is gated.
function tune(request, shape) {
  const m = resolve(request.model, "tuning.preset.name");
  if (request.method === "qlora") {
    throw pluginError("unsupported", "tuning.method", "QLoRA (4-bit NF4 base weights) is not implemented by kaito-tune",
      "set tuning.method to lora");
  }
  if (request.method !== "lora") {
    throw pluginError("invalid-input", "tuning.method", `${JSON.stringify(request.method)} is not lora or qlora`, null);
  }
  const weights = weightsBytes(m);
  const need = 2 * weights + idiv(weights, 5); // float32 weights, plus adapter, optimiser state and activations
  const mib = (bytes) => Math.floor(bytes / 1048576);
  if (need > shape.gpuMemoryBytes) {
    throw pluginError("does-not-fit", "resource.instanceType",
      `LoRA training of ${m.name} needs about ${mib(need)} MiB on one GPU; a ${shape.gpuModel} has ${mib(shape.gpuMemoryBytes)} MiB`,
      "choose an instance type with more memory per GPU");
  }
  const notes = [];
  if (shape.gpusPerNode > 1) {
    notes.push(`kaito-tune trains on one GPU; ${shape.gpusPerNode - 1} of the node's ${shape.gpusPerNode} GPUs stay free`);
  }
  const args = ["--model", m.hfId, "--download-dir", WEIGHTS_DIR];
  const volumes = [
    { name: "dshm", mountPath: "/dev/shm", readOnly: false, source: { tag: "memory", val: null } },
    { name: "weights", mountPath: WEIGHTS_DIR, readOnly: false, source: { tag: "empty-dir", val: null } },
  ];
  if (request.configMap != null) {
    args.push("--config", TUNE_CONFIG_FILE);
    volumes.push({ name: "config", mountPath: "/mnt/config", readOnly: true, source: { tag: "config-map", val: request.configMap } });
  }
  const input = request.input;
  if (input.tag === "urls") {
    for (const url of input.val) args.push("--data", url);
  } else if (input.tag === "image") {
    args.push("--data", `oci://${input.val}`);
  } else {
    args.push("--data", input.val);
  }
  const output = request.output;
  if (output.tag === "directory") {
    args.push("--output", output.val);
  } else {
    args.push("--output", request.scratchDir, "--push", `oci://${output.val}`);
  }
  for (const config of request.registryConfigs) args.push("--registry-config", config);
  args.push("--metrics-port", String(TUNE_METRICS_PORT));
  const env = [];
  if (request.modelAccessSecret != null) {
    env.push({ name: "HF_TOKEN", value: { tag: "secret-key", val: { name: request.modelAccessSecret, key: "HF_TOKEN", optional: true } } });
  }
  return {
    runtime: "tch",
    notes,
    resources: {
      nodeCount: 1,
      gpusPerNode: shape.gpusPerNode,
      gpuMemoryBytes: need,
      diskBytes: diskBytes(m),
      parallelism: { tensor: 1, pipeline: 1, data: 1 },
    },
    workload: {
      image: `${request.imageRegistry.replace(/\/+$/, "")}/kaito-inference:${TCH_IMAGE_TAG}`,
      command: ["kaito-tune"],
      args,
      env,
      ports: [{ name: "metrics", containerPort: TUNE_METRICS_PORT, servicePort: null }],
      startupProbe: null, readinessProbe: null, livenessProbe: null,
      volumes,
      gpusPerPod: 1,
      labels: [],
      privileged: false, addCapabilities: [], hostNetwork: false, hostPid: false, hostIpc: false,
    },
    backoffLimit: TUNE_BACKOFF_LIMIT,
  };
}

export const presetApi = {
  info() {
    return { name: "preset-phi", version: "0.1.0", description: "Microsoft Phi-3, Phi-3.5 and Phi-4 models (JavaScript port)" };
  },
  models() {
    return MODELS.map(info);
  },
  plan,
  tune,
};
