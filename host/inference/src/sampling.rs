//! Choosing the next token: penalties, temperature, top-k, top-p, seeded randomness.

use crate::grammar::Constraint;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// Sampling knobs of one request, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means no limit.
    pub top_k: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// Keep going past EOS (benchmarks need fixed-length outputs).
    pub ignore_eos: bool,
    /// Report each chosen token's log probability and this many most likely alternatives (`None`: report nothing).
    pub logprobs: Option<usize>,
    /// Report each prompt token's log probability (given the tokens before it) and this many alternatives.
    pub prompt_logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: 16,
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: None,
        }
    }
}

/// A sequence's sampler: its random stream, its token counts for penalties and its grammar, if any.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    counts: HashMap<u32, u32>,
    constraint: Option<Constraint>,
}

impl Sampler {
    /// A sampler seeded from the request (or from entropy).
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Sampler { params, rng, counts: HashMap::new(), constraint: None }
    }

    /// Samples only what `constraint` allows (structured output).
    pub fn constrained(mut self, constraint: Option<Constraint>) -> Self {
        self.constraint = constraint;
        self
    }

    /// The grammar is complete: the sequence ends with the token just sampled.
    pub fn grammar_done(&self) -> bool {
        self.constraint.as_ref().is_some_and(Constraint::done)
    }

    /// The request's parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Pick the next token from `logits` (masked by the grammar first) and remember it; `Err` when the grammar
    /// fails (a library fault: it never refuses a token its own mask allowed).
    pub fn sample(&mut self, logits: &mut [f32]) -> Result<u32, String> {
        if let Some(c) = self.constraint.as_mut() {
            c.mask(logits).map_err(|e| format!("structured output: {e}"))?;
        }
        let p = &self.params;
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &c) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * c as f32;
                }
            }
        }
        let token = if p.temperature <= 0.0 || p.top_k == 1 { argmax(logits) } else { self.draw(logits) };
        *self.counts.entry(token).or_default() += 1;
        if let Some(c) = self.constraint.as_mut() {
            c.commit(token).map_err(|e| format!("structured output: {e}"))?;
        }
        Ok(token)
    }

    /// Draws a token from the softmax of `logits / temperature`, cut to the `top_k` best and then to the smallest
    /// set holding `top_p` of the probability. Only the candidates the cuts need are sorted: none without cuts,
    /// `top_k`, or the best 64 when they already hold `top_p` (a whole-vocabulary sort cost ~2 ms per token).
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let (top_k, top_p, temperature) = (self.params.top_k, self.params.top_p, self.params.temperature);
        let by_logit = descending(logits);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Unnormalised probabilities, one exp per token.
        let weight: Vec<f32> = logits.iter().map(|&l| ((l - max) / temperature).exp()).collect();
        let r: f32 = self.rng.random();
        if top_k == 0 && top_p >= 1.0 {
            // No cut: every token in id order.
            let total: f32 = weight.iter().sum();
            return pick(weight.iter().enumerate().map(|(t, w)| (t as u32, w / total)), r);
        }
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        if top_k > 0 && top_k < order.len() {
            order.select_nth_unstable_by(top_k - 1, &by_logit);
            order.truncate(top_k);
        }
        let total: f32 = order.iter().map(|&t| weight[t as usize]).sum();
        // Sort the best `m` first; if they hold top_p, the nucleus is among them, else sort everything.
        let m = 64.min(order.len());
        if m < order.len() {
            order.select_nth_unstable_by(m - 1, &by_logit);
        }
        order[..m].sort_unstable_by(&by_logit);
        let held: f32 = order[..m].iter().map(|&t| weight[t as usize] / total).sum();
        if top_p < 1.0 && held < top_p && m < order.len() {
            order.sort_unstable_by(&by_logit);
        } else if top_p < 1.0 {
            order.truncate(m);
        }
        if top_p >= 1.0 {
            return pick(order.iter().map(|&t| (t, weight[t as usize] / total)), r);
        }
        let mut acc = 0.0;
        let keep = order.iter().position(|&t| {
            acc += weight[t as usize] / total;
            acc >= top_p
        });
        order.truncate(keep.map_or(order.len(), |i| i + 1));
        let kept: f32 = order.iter().map(|&t| weight[t as usize]).sum();
        pick(order.iter().map(|&t| (t, weight[t as usize] / kept)), r)
    }
}

/// Token ids by logit, highest first (ties: the lower id first), for sorting and selecting.
fn descending(logits: &[f32]) -> impl Fn(&u32, &u32) -> std::cmp::Ordering + '_ {
    move |a, b| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b))
}

/// The candidate whose cumulative probability first passes `r` (the last one if rounding leaves `r` unreached).
fn pick(candidates: impl Iterator<Item = (u32, f32)>, mut r: f32) -> u32 {
    let mut last = 0;
    for (t, p) in candidates {
        if r < p {
            return t;
        }
        r -= p;
        last = t;
    }
    last
}

/// A chosen token's log probability under the model (before penalties and temperature, as vLLM and OpenAI report
/// it) and the `top` most likely tokens with theirs, most likely first.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// `token`'s log-softmax over `logits` (summed in f64) and the `top` best tokens' (ties by lower id).
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    let lp = |t: u32| (logits[t as usize] as f64 - lse) as f32;
    let mut best: Vec<u32> = Vec::with_capacity(top + 1);
    if top > 0 {
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        let k = top.min(ids.len());
        let by = descending(logits);
        ids.select_nth_unstable_by(k - 1, &by);
        ids.truncate(k);
        ids.sort_unstable_by(&by);
        best = ids;
    }
    TokenLogprob { logprob: lp(token), top: best.into_iter().map(|t| (t, lp(t))).collect() }
}

/// Index of the largest logit (the first on ties, as torch's argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_best_first() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let lp = logprobs(&logits, 2, 3);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        assert!((lp.logprob as f64 - (2f64.exp() / z).ln()).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 2], "ties by lower id");
        assert!(lp.top.iter().map(|t| (t.1 as f64).exp()).sum::<f64>() < 1.0);
        assert!(logprobs(&logits, 0, 0).top.is_empty());
        assert_eq!(logprobs(&logits, 0, 9).top.len(), 4);
    }

    #[test]
    fn greedy_and_penalties() {
        let mut s = Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() });
        assert_eq!(s.sample(&mut [0.1, 2.0, 1.9]).unwrap(), 1);
        let mut s = Sampler::new(SamplingParams { temperature: 0.0, frequency_penalty: 0.5, ..Default::default() });
        assert_eq!(s.sample(&mut [0.1, 2.0, 1.9]).unwrap(), 1);
        assert_eq!(s.sample(&mut [0.1, 2.0, 1.9]).unwrap(), 2, "the repeated token is penalised");
    }

    /// Draws match their distribution: 20,000 seeded draws per setting against the exact probabilities after the
    /// cuts (within 0.015 each), so skipping the sort changes no probability.
    #[test]
    fn draws_follow_the_cut_distribution() {
        let logits: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32) / 20.0).collect();
        let exact = |top_k: usize, top_p: f32, temperature: f32| -> Vec<f64> {
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b)));
            if top_k > 0 {
                order.truncate(top_k);
            }
            let w: Vec<f64> = order.iter().map(|&t| ((logits[t] as f64) / temperature as f64).exp()).collect();
            let total: f64 = w.iter().sum();
            let mut acc = 0.0;
            let mut keep = order.len();
            for (i, x) in w.iter().enumerate() {
                acc += x / total;
                if acc >= top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            let kept: f64 = w[..keep].iter().sum();
            let mut p = vec![0.0; logits.len()];
            for (i, &t) in order[..keep].iter().enumerate() {
                p[t] = w[i] / kept;
            }
            p
        };
        for (top_k, top_p, temperature) in
            [(0, 1.0, 1.0), (0, 1.0, 0.5), (5, 1.0, 1.0), (0, 0.9, 1.0), (0, 0.999, 2.0), (80, 0.5, 1.0)]
        {
            let want = exact(top_k, top_p, temperature);
            let mut s = Sampler::new(SamplingParams { seed: Some(3), top_k, top_p, temperature, ..Default::default() });
            let mut seen = vec![0.0f64; logits.len()];
            let n = 20_000;
            for _ in 0..n {
                seen[s.sample(&mut logits.clone()).unwrap() as usize] += 1.0 / n as f64;
            }
            for (t, (got, p)) in seen.iter().zip(&want).enumerate() {
                assert!((got - p).abs() < 0.015, "top_k {top_k} top_p {top_p} t {temperature}: token {t} {got} vs {p}");
                assert!(*p > 0.0 || *got == 0.0, "token {t} is outside the cut but was drawn");
            }
        }
    }

    #[test]
    fn seeded_sampling_repeats_and_respects_top_k() {
        let logits = vec![1.0, 1.1, 0.9, 1.05, -5.0];
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams { seed: Some(seed), top_k: 3, ..Default::default() });
            (0..50).map(|_| s.sample(&mut logits.clone()).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert!(run(7).iter().all(|t| [0, 1, 3].contains(t)), "only the top 3 are drawn");
        let mut s = Sampler::new(SamplingParams { seed: Some(1), top_p: 0.01, ..Default::default() });
        assert!((0..20).all(|_| s.sample(&mut logits.clone()).unwrap() == 1), "a tiny top_p keeps only the best");
    }
}
