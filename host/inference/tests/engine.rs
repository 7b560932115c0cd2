//! The continuous-batching engine: concurrent sequences give the same greedy tokens as alone, the waiting line
//! is bounded, and a client that goes away frees its sequence.

mod common;

use kaito_inference::engine::{Engine, EngineConfig, Event, FinishReason, GenRequest, SubmitError};
use kaito_inference::loader;
use kaito_inference::metrics::Metrics;
use kaito_inference::sampling::{Sampler, SamplingParams};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind};
use tokio::sync::mpsc::UnboundedReceiver;

fn engine(dir: &Path, config: EngineConfig) -> (Engine, kaito_inference::text::TextModel) {
    tch::set_num_threads(1);
    let loaded = loader::load(dir, Device::Cpu, Kind::Float, 2048).expect("model loads");
    let stop = loaded.text.stop_ids.clone();
    (Engine::start(loaded.model, stop, config, Arc::new(Metrics::default())), loaded.text)
}

fn greedy(max_tokens: usize) -> Sampler {
    Sampler::new(SamplingParams { temperature: 0.0, max_tokens, ..Default::default() })
}

fn submit(engine: &Engine, prompt: Vec<u32>, max_tokens: usize) -> Result<UnboundedReceiver<Event>, SubmitError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    engine
        .submit(GenRequest { prompt, adapter: None, sampler: greedy(max_tokens), events: tx, siblings: vec![] })
        .map(|_| rx)
}

async fn collect(mut rx: UnboundedReceiver<Event>) -> (Vec<u32>, FinishReason) {
    let mut tokens = Vec::new();
    while let Some(e) = rx.recv().await {
        match e {
            Event::Token(t, _) => tokens.push(t),
            Event::PromptLogprobs(_) => panic!("prompt log probabilities were not asked for"),
            Event::Finished(r) => return (tokens, r),
            Event::Failed(m) => panic!("generation failed: {m}"),
        }
    }
    panic!("the engine dropped the request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_sequences_match_their_solo_runs() {
    let dir = common::model("smollm2-135m-instruct");
    let (engine, text) = engine(&dir, EngineConfig { max_batch: 8, step_tokens: 64, ..Default::default() });
    let questions = [
        "What is the capital of France?",
        "Name three colours.",
        "Write a haiku about the sea.",
        "What is 2 + 2?",
        "Who wrote Hamlet?",
        "Give me a synonym for happy.",
        "What do bees make?",
        "Say hello in Spanish.",
    ];
    let prompts: Vec<Vec<u32>> = questions.iter().map(|q| common::chat_prompt(&text, q)).collect();
    let mut solo = Vec::new();
    for p in &prompts {
        solo.push(collect(submit(&engine, p.clone(), 24).unwrap()).await);
    }
    // All at once: prompts are prefilled in chunks beside other sequences' decode steps.
    let receivers: Vec<_> = prompts.iter().map(|p| submit(&engine, p.clone(), 24).unwrap()).collect();
    let together = futures::future::join_all(receivers.into_iter().map(collect)).await;
    for (i, (a, b)) in solo.iter().zip(&together).enumerate() {
        assert_eq!(a, b, "request {i} ({:?}) differs when batched", questions[i]);
    }
    assert!(text.decode(&solo[0].0).unwrap().contains("Paris"));
}

#[tokio::test]
async fn a_full_waiting_line_refuses_and_a_disconnect_frees_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny("LlamaForCausalLM").write(dir.path());
    let (engine, _) = engine(dir.path(), EngineConfig { max_batch: 1, max_waiting: 2, ..Default::default() });
    let mut first = submit(&engine, vec![1, 5, 9], 200).unwrap();
    // Once the first runs, two may wait; the next is refused.
    assert!(matches!(first.recv().await, Some(Event::Token(..))));
    let waiting: Vec<_> = (0..2).map(|_| submit(&engine, vec![1, 7], 5).unwrap()).collect();
    assert_eq!(submit(&engine, vec![1, 8], 5).err(), Some(SubmitError::Overloaded(2)));

    drop(first);
    let started = Instant::now();
    for rx in waiting {
        let (tokens, reason) = collect(rx).await;
        assert_eq!((tokens.len(), reason), (5, FinishReason::Length), "waiting requests run once the first is gone");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.load() != (0, 0) {
        assert!(Instant::now() < deadline, "sequences still held: {:?}", engine.load());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn preemption_keeps_every_sequence_within_the_kv_bound() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny("Qwen2ForCausalLM").write(dir.path());
    let prompt: Vec<u32> = (1..40).collect();
    let (alone, _) = engine(dir.path(), EngineConfig::default());
    let want = collect(submit(&alone, prompt.clone(), 60).unwrap()).await;
    // Room for one sequence and a half: the second is preempted and recomputed, and still gets the same tokens.
    let (tight, _) = engine(dir.path(), EngineConfig { kv_tokens: 150, ..Default::default() });
    let a = submit(&tight, prompt.clone(), 60).unwrap();
    let b = submit(&tight, prompt.clone(), 60).unwrap();
    let (ra, rb) = futures::future::join(collect(a), collect(b)).await;
    assert_eq!(ra, want);
    assert_eq!(rb, want);
}

/// The prompt's log probabilities (completions' `echo` with `logprobs`) are the same whether the prompt goes in at
/// once or in chunks of 5 tokens beside another sequence, are sent once before the first token, and score each
/// prompt token after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_logprobs_are_the_same_in_chunks_and_sent_once() {
    let dir = common::model("smollm2-135m-instruct");
    let mut runs = Vec::new();
    for step_tokens in [512, 5] {
        let (engine, text) = engine(&dir, EngineConfig { step_tokens, ..Default::default() });
        let prompt = common::chat_prompt(&text, "Name the largest planet in the solar system.");
        let other = submit(&engine, common::chat_prompt(&text, "Say hello."), 4).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let params = SamplingParams { temperature: 0.0, max_tokens: 3, prompt_logprobs: Some(2), ..Default::default() };
        let request = GenRequest {
            prompt: prompt.clone(),
            adapter: None,
            sampler: Sampler::new(params),
            events: tx,
            siblings: vec![],
        };
        engine.submit(request).unwrap();
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            let end = matches!(e, Event::Finished(_) | Event::Failed(_));
            events.push(e);
            if end {
                break;
            }
        }
        collect(other).await;
        let scored: Vec<_> =
            events.iter().filter_map(|e| if let Event::PromptLogprobs(l) = e { Some(l) } else { None }).collect();
        assert_eq!(scored.len(), 1, "sent once: {events:?}");
        assert!(matches!(events[0], Event::PromptLogprobs(_)), "before the first token");
        assert_eq!(scored[0].len(), prompt.len() - 1, "every prompt token after the first");
        assert!(scored[0].iter().all(|lp| lp.logprob <= 0.0 && lp.top.len() == 2));
        runs.push(scored[0].clone());
    }
    let worst = runs[0].iter().zip(&runs[1]).map(|(a, b)| (a.logprob - b.logprob).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "chunked vs whole: {worst}");
}

/// `n` choices as one request share the prompt: it is computed once (the prompt-token counter moves by one prompt),
/// its cache copied to each choice, and each choice samples exactly as a request of its own with its seed would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choices_share_one_prompt_and_sample_as_alone() {
    let dir = common::model("smollm2-135m-instruct");
    tch::set_num_threads(1);
    let loaded = loader::load(&dir, Device::Cpu, Kind::Float, 2048).expect("model loads");
    let metrics = Arc::new(Metrics::default());
    let stop = loaded.text.stop_ids.clone();
    let engine = Engine::start(loaded.model, stop, EngineConfig::default(), metrics.clone());
    let prompt = common::chat_prompt(&loaded.text, "Tell me a fact about owls.");
    let sampler = |seed: u64| {
        Sampler::new(SamplingParams { temperature: 1.0, seed: Some(seed), max_tokens: 8, ..Default::default() })
    };
    let mut alone = Vec::new();
    for seed in 40..43 {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let request =
            GenRequest { prompt: prompt.clone(), adapter: None, sampler: sampler(seed), events: tx, siblings: vec![] };
        engine.submit(request).unwrap();
        alone.push(collect(rx).await.0);
    }
    let counted = |m: &Metrics| {
        let text = m.encode();
        let line = text.lines().find(|l| l.starts_with("kaito_inference_prompt_tokens_total")).unwrap().to_string();
        line.rsplit(' ').next().unwrap().parse::<usize>().unwrap()
    };
    let before = counted(&metrics);
    assert_eq!(before, 3 * prompt.len());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut receivers = vec![rx];
    let mut siblings = Vec::new();
    for seed in 41..43 {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        siblings.push((sampler(seed), tx));
        receivers.push(rx);
    }
    engine
        .submit(GenRequest { prompt: prompt.clone(), adapter: None, sampler: sampler(40), events: tx, siblings })
        .unwrap();
    let mut together = Vec::new();
    for rx in receivers {
        together.push(collect(rx).await.0);
    }
    assert_eq!(together, alone, "each choice samples as alone");
    assert!(together[0] != together[1] || together[1] != together[2], "seeds differ: {together:?}");
    assert_eq!(counted(&metrics) - before, prompt.len(), "the prompt went through the model once");
}
