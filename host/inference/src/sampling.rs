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

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_unstable_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
        if p.top_k > 0 {
            order.truncate(p.top_k);
        }
        let max = logits[order[0] as usize];
        let mut probs: Vec<f32> = order.iter().map(|&t| ((logits[t as usize] - max) / p.temperature).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs.iter().position(|x| {
                acc += x;
                acc >= p.top_p
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            order.truncate(keep);
            let sum: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= sum);
        }
        let mut r: f32 = self.rng.random();
        for (t, pr) in order.iter().zip(&probs) {
            if r < *pr {
                return *t;
            }
            r -= pr;
        }
        *order.last().expect("at least one candidate")
    }
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
        let by = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        ids.select_nth_unstable_by(k - 1, by);
        ids.truncate(k);
        ids.sort_unstable_by(by);
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
