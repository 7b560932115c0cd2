//! LoRA adapters in PEFT's format (`adapter_config.json`, `adapter_model.safetensors`), applied at inference on top
//! of the base model without merging, so requests for different adapters and for the base model share one batch:
//! each projection adds `x·Aᵀ·Bᵀ·scale` for the tokens of the sequences that use that adapter.
//!
//! What PEFT writes that we cannot apply exactly is refused with the field that says so (DoRA, trained biases,
//! `modules_to_save`, per-module rank or alpha patterns, embedding or head adapters): an adapter is served as
//! trained or not at all.

use crate::models::decoder::Decoder;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The projections of a decoder layer an adapter can change, in [`Decoder`]'s split form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Module {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// One adapted projection: `A` [rank, in] and `B` [out, rank] with the scale folded into `B`.
pub struct Pair {
    a: Tensor,
    b: Tensor,
}

/// A loaded adapter.
pub struct Adapter {
    /// The name requests use in `model`.
    pub name: String,
    /// Where it was loaded from (listed as the model card's `root`).
    pub source: String,
    /// Rank (`r`).
    pub rank: usize,
    /// Per layer, per [`Module`] (indexed by its discriminant).
    layers: Vec<[Option<Pair>; 7]>,
    /// Dropout on the adapter's input: only while training (`kaito-tune`); 0 when serving.
    dropout: f64,
}

/// What a base model offers adapters: per layer, each projection's (in, out) size, and where the weights live.
#[derive(Debug, Clone)]
pub struct Shape {
    layers: usize,
    dims: [(i64, i64); 7],
    kind: Kind,
    device: Device,
}

impl Shape {
    /// The shape of `model`.
    pub fn of(model: &Decoder) -> Shape {
        let l = &model.layers[0];
        let dim = |w: &Tensor| {
            let s = w.size();
            (s[1], s[0])
        };
        Shape {
            layers: model.layers.len(),
            dims: [
                dim(&l.q.weight),
                dim(&l.k.weight),
                dim(&l.v.weight),
                dim(&l.o.weight),
                dim(&l.gate.weight),
                dim(&l.up.weight),
                dim(&l.down.weight),
            ],
            kind: model.kind,
            device: model.device,
        }
    }

    /// Decoder layers.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// The (in, out) size of projection `m`.
    pub fn dims(&self, m: Module) -> (i64, i64) {
        self.dims[m as usize]
    }
}

/// The fields of PEFT's `adapter_config.json` that change the math; the rest (paths, task type, dropout, which
/// only acts in training) are read by PEFT, not needed here.
#[derive(Debug, Deserialize)]
struct PeftConfig {
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    bias: Option<String>,
    modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, serde_json::Value>,
    layers_to_transform: Option<serde_json::Value>,
}

impl PeftConfig {
    /// Refuses what we cannot apply exactly, naming the field.
    fn check(&self) -> anyhow::Result<()> {
        let refuse = |field: &str, why: &str| Err(anyhow::anyhow!("adapter_config.json: {field}: {why}"));
        if let Some(t) = self.peft_type.as_deref().filter(|t| *t != "LORA") {
            return refuse("peft_type", &format!("{t:?} is not LORA"));
        }
        if self.r == 0 {
            return refuse("r", "the rank must be positive");
        }
        if self.use_dora {
            return refuse("use_dora", "DoRA adapters are not served");
        }
        if self.fan_in_fan_out {
            return refuse("fan_in_fan_out", "only nn.Linear layouts (false) are served");
        }
        if let Some(b) = self.bias.as_deref().filter(|b| *b != "none") {
            return refuse("bias", &format!("{b:?}: adapters with trained biases are not served"));
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_null() && m.as_array().is_none_or(|a| !a.is_empty())) {
            return refuse("modules_to_save", "adapters that replace whole modules are not served");
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return refuse("rank_pattern/alpha_pattern", "per-module ranks or alphas are not served");
        }
        if self.layers_to_transform.as_ref().is_some_and(|l| !l.is_null()) {
            // The tensors say which layers are adapted; the field only restricts what training touched.
            tracing::debug!("layers_to_transform is set; the adapter's tensors name its layers");
        }
        Ok(())
    }

    fn scale(&self) -> f64 {
        scale(self.lora_alpha, self.r, self.use_rslora)
    }
}

/// PEFT's LoRA scale: `alpha / r`, or `alpha / √r` with rsLoRA.
pub fn scale(alpha: f64, rank: usize, rslora: bool) -> f64 {
    if rslora { alpha / (rank as f64).sqrt() } else { alpha / rank as f64 }
}

/// Which split projections a PEFT module name covers: one, or the rows of a fused one (Phi-3's `qkv_proj`,
/// `gate_up_proj`), in order.
fn targets(name: &str) -> Option<&'static [Module]> {
    Some(match name {
        "q_proj" => &[Module::Q],
        "k_proj" => &[Module::K],
        "v_proj" => &[Module::V],
        "o_proj" => &[Module::O],
        "gate_proj" => &[Module::Gate],
        "up_proj" => &[Module::Up],
        "down_proj" => &[Module::Down],
        "qkv_proj" => &[Module::Q, Module::K, Module::V],
        "gate_up_proj" => &[Module::Gate, Module::Up],
        _ => return None,
    })
}

/// `base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}[.default].weight` as (layer, module,
/// is A).
fn parse_key(key: &str) -> Option<(usize, &str, bool)> {
    let rest = key.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix("self_attn.").or_else(|| rest.strip_prefix("mlp."))?;
    let (module, rest) = rest.split_once('.')?;
    let is_a = match rest {
        "lora_A.weight" | "lora_A.default.weight" => true,
        "lora_B.weight" | "lora_B.default.weight" => false,
        _ => return None,
    };
    Some((layer.parse().ok()?, module, is_a))
}

impl Adapter {
    /// Loads the PEFT adapter directory `dir` for a model of `shape`, checking every tensor's name and size.
    pub fn load(name: &str, dir: &Path, shape: &Shape) -> anyhow::Result<Adapter> {
        Adapter::load_with_strength(name, dir, shape, 1.0)
    }

    /// [`Adapter::load`], its contribution scaled by `strength` (KAITO's `inference.adapters[].strength`, 0 to 1).
    pub fn load_with_strength(name: &str, dir: &Path, shape: &Shape, strength: f64) -> anyhow::Result<Adapter> {
        anyhow::ensure!((0.0..=1.0).contains(&strength), "strength {strength}: it is a number between 0 and 1");
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| anyhow::anyhow!("{}: {e} (a PEFT adapter directory has one)", config_path.display()))?;
        let config: PeftConfig =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
        config.check()?;
        let weights = ["adapter_model.safetensors", "adapter_model.bin"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow::anyhow!("{}: no adapter_model.safetensors", dir.display()))?;
        anyhow::ensure!(
            weights.extension().is_some_and(|e| e == "safetensors"),
            "{}: only safetensors adapters are read; save it with safe_serialization=True",
            weights.display()
        );
        let tensors = Tensor::read_safetensors(&weights).map_err(|e| anyhow::anyhow!("{}: {e}", weights.display()))?;
        let mut halves: BTreeMap<(usize, String), (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        for (key, tensor) in tensors {
            let (layer, module, is_a) = parse_key(&key)
                .filter(|(_, m, _)| targets(m).is_some())
                .ok_or_else(|| anyhow::anyhow!("{}: tensor {key:?} is not a LoRA projection we serve (attention and MLP projections of decoder layers)", weights.display()))?;
            anyhow::ensure!(layer < shape.layers, "{key}: layer {layer}, but the model has {} layers", shape.layers);
            let slot = halves.entry((layer, module.to_string())).or_default();
            if is_a { slot.0 = Some(tensor) } else { slot.1 = Some(tensor) }
        }
        anyhow::ensure!(!halves.is_empty(), "{}: the adapter holds no LoRA tensors", weights.display());
        let scale = config.scale() * strength;
        let mut layers: Vec<[Option<Pair>; 7]> = (0..shape.layers).map(|_| Default::default()).collect();
        for ((layer, module), pair) in halves {
            let (Some(a), Some(b)) = pair else {
                anyhow::bail!("layer {layer} {module}: lora_A and lora_B must both be present");
            };
            let parts = targets(&module).expect("filtered above");
            let (rank, in_dim) = (a.size()[0], a.size()[1]);
            let out_total: i64 = parts.iter().map(|m| shape.dims(*m).1).sum();
            let want_in = shape.dims(parts[0]).0;
            anyhow::ensure!(
                rank as usize == config.r && in_dim == want_in && b.size() == [out_total, rank],
                "layer {layer} {module}: lora_A {:?} and lora_B {:?} do not fit r={} on a [{want_in} -> {out_total}] projection",
                a.size(),
                b.size(),
                config.r
            );
            let a = a.to_kind(shape.kind).to_device(shape.device);
            let b = (b.to_kind(Kind::Double) * scale).to_kind(shape.kind).to_device(shape.device);
            let mut row = 0;
            for m in parts {
                let out = shape.dims(*m).1;
                let slot = &mut layers[layer][*m as usize];
                anyhow::ensure!(slot.is_none(), "layer {layer}: {m:?} is adapted twice");
                *slot = Some(Pair { a: a.shallow_clone(), b: b.narrow(0, row, out).contiguous() });
                row += out;
            }
        }
        Ok(Adapter { name: name.to_string(), source: dir.display().to_string(), rank: config.r, layers, dropout: 0.0 })
    }

    /// An adapter from tensors in hand (training): per layer, per [`Module`], `A` [rank, in] and `B` [out, rank]
    /// with the scale already applied, and the dropout on the adapter's input.
    pub fn from_parts(name: &str, rank: usize, parts: Vec<[Option<(Tensor, Tensor)>; 7]>, dropout: f64) -> Adapter {
        let layers = parts.into_iter().map(|layer| layer.map(|p| p.map(|(a, b)| Pair { a, b }))).collect();
        Adapter { name: name.to_string(), source: String::new(), rank, layers, dropout }
    }
}

/// Which split projections a PEFT module name covers, in row order of the fused projection it may name.
pub fn peft_targets(name: &str) -> Option<&'static [Module]> {
    targets(name)
}

/// The adapters of one forward pass: for each adapter in the batch, a [tokens, 1] mask of the flat-batch rows of
/// its tokens (`None`: every row).
///
/// With several adapters in the batch, a projection they all adapt stacks them into one pair: `A`s concatenated
/// to [Σr, in], `B`s to [out, Σr], and a [tokens, Σr] mask keeping each token's own adapter's rank columns, so the
/// cost is two thin matmuls however many adapters share the batch (small ops, not flops, are what a CPU step pays
/// for here). Gathering and scattering rows instead (`index_select`/`index_add`) was 5x slower with 4 adapters.
pub struct Batch<'a> {
    groups: Vec<(&'a Adapter, Option<Tensor>)>,
    /// [tokens, Σr]: 1 where a token's adapter owns the rank column; set when more than one adapter is present.
    stacked_mask: Option<Tensor>,
}

impl<'a> Batch<'a> {
    /// Groups the tokens of `spans` (start, len) by the adapter of each span.
    pub fn new(spans: &[(usize, usize)], adapters: &[Option<&'a Adapter>], kind: Kind, device: Device) -> Batch<'a> {
        let total: usize = spans.iter().map(|(_, l)| l).sum();
        let mut masks: Vec<(&'a Adapter, Vec<f32>)> = Vec::new();
        for (&(start, len), adapter) in spans.iter().zip(adapters) {
            let Some(adapter) = *adapter else { continue };
            let at = match masks.iter().position(|(a, _)| std::ptr::eq(*a, adapter)) {
                Some(i) => i,
                None => {
                    masks.push((adapter, vec![0.0; total]));
                    masks.len() - 1
                }
            };
            masks[at].1[start..start + len].fill(1.0);
        }
        let stackable = masks.len() > 1 && masks.iter().all(|(a, _)| a.dropout == 0.0);
        let stacked_mask = stackable.then(|| {
            let width: usize = masks.iter().map(|(a, _)| a.rank).sum();
            let mut m = vec![0f32; total * width];
            let mut col = 0;
            for (a, rows) in &masks {
                for (t, on) in rows.iter().enumerate() {
                    if *on == 1.0 {
                        m[t * width + col..t * width + col + a.rank].fill(1.0);
                    }
                }
                col += a.rank;
            }
            Tensor::from_slice(&m).view([total as i64, width as i64]).to_kind(kind).to_device(device)
        });
        let groups = masks
            .into_iter()
            .map(|(a, m)| {
                let every = m.iter().all(|&x| x == 1.0);
                (a, (!every).then(|| Tensor::from_slice(&m).view([total as i64, 1]).to_kind(kind).to_device(device)))
            })
            .collect();
        Batch { groups, stacked_mask }
    }

    /// Whether no token uses an adapter.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// `y` (the base projection of `x`) plus each adapter's contribution to its rows.
    pub fn apply(&self, y: Tensor, x: &Tensor, layer: usize, module: Module) -> Tensor {
        let pairs: Vec<Option<&Pair>> =
            self.groups.iter().map(|(a, _)| a.layers[layer][module as usize].as_ref()).collect();
        if let Some(mask) = &self.stacked_mask
            && pairs.iter().all(Option::is_some)
        {
            let a = Tensor::cat(&pairs.iter().map(|p| &p.expect("checked").a).collect::<Vec<_>>(), 0);
            let b = Tensor::cat(&pairs.iter().map(|p| &p.expect("checked").b).collect::<Vec<_>>(), 1);
            return y + (x.linear::<Tensor>(&a, None) * mask).linear::<Tensor>(&b, None);
        }
        let mut y = y;
        for ((adapter, mask), pair) in self.groups.iter().zip(pairs) {
            let Some(pair) = pair else { continue };
            let h = if adapter.dropout > 0.0 {
                x.dropout(adapter.dropout, true).linear::<Tensor>(&pair.a, None)
            } else {
                x.linear::<Tensor>(&pair.a, None)
            };
            let h = match mask {
                None => h,
                Some(mask) => h * mask,
            };
            // Out of place: `y` may be a view of a stacked projection's output (q/k/v, gate/up) that autograd keeps.
            y = &y + h.linear::<Tensor>(&pair.b, None);
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_keys_parse() {
        assert_eq!(
            parse_key("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"),
            Some((3, "q_proj", true))
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.0.mlp.gate_up_proj.lora_B.weight"),
            Some((0, "gate_up_proj", false))
        );
        assert_eq!(parse_key("base_model.model.lm_head.lora_A.weight"), None);
        assert_eq!(parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"), None);
        assert!(targets("embed_tokens").is_none());
        assert_eq!(targets("qkv_proj"), Some(&[Module::Q, Module::K, Module::V][..]));
    }

    #[test]
    fn configs_we_cannot_apply_are_refused_by_field() {
        let base = serde_json::json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none"});
        let ok: PeftConfig = serde_json::from_value(base.clone()).unwrap();
        assert!(ok.check().is_ok());
        assert_eq!(ok.scale(), 2.0);
        for (field, value) in [
            ("use_dora", serde_json::json!(true)),
            ("bias", serde_json::json!("lora_only")),
            ("modules_to_save", serde_json::json!(["lm_head"])),
            ("rank_pattern", serde_json::json!({"q_proj": 4})),
            ("fan_in_fan_out", serde_json::json!(true)),
            ("peft_type", serde_json::json!("IA3")),
        ] {
            let mut v = base.clone();
            v[field] = value;
            let c: PeftConfig = serde_json::from_value(v).unwrap();
            let e = c.check().unwrap_err().to_string();
            assert!(e.contains(field.split('_').next().unwrap()), "{field}: {e}");
        }
        let rs: PeftConfig =
            serde_json::from_value(serde_json::json!({"r": 16, "lora_alpha": 16, "use_rslora": true})).unwrap();
        assert_eq!(rs.scale(), 4.0);
    }
}
