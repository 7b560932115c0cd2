//! The engine: one thread owns the model and runs a continuous-batching scheduler.
//!
//! Each step it gathers a decode token for every running sequence, then
//! spends what is left of the step's token budget on prompt chunks (new
//! sequences join between steps; finished or cancelled ones leave). KV memory
//! is bounded in tokens: a sequence is admitted only when its prompt fits, and
//! when decoding outgrows the bound the newest sequence is preempted (its cache
//! freed, its tokens recomputed later), so memory never runs out mid-step.

use crate::lora::{Adapter, Shape};
use crate::metrics::Metrics;
use crate::models::decoder::{Decoder, SeqCache, Span};
use crate::sampling::{Sampler, TokenLogprob};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS or stop token.
    Stop,
    /// max_tokens or the context window reached.
    Length,
}

impl FinishReason {
    /// The OpenAI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the engine tells a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token, with its log probabilities when the request asked for them.
    Token(u32, Option<TokenLogprob>),
    /// The prompt's tokens' log probabilities, from the second token on (sent once, before the first token).
    PromptLogprobs(Vec<TokenLogprob>),
    Finished(FinishReason),
    Failed(String),
}

/// One generation request.
pub struct GenRequest {
    pub prompt: Vec<u32>,
    /// The name of the loaded LoRA adapter to generate with (`None`: the base model). The sequence holds the
    /// adapter until it ends, so unloading an adapter never cuts a generation short.
    pub adapter: Option<String>,
    pub sampler: Sampler,
    /// Closing the receiver cancels the request.
    pub events: UnboundedSender<Event>,
    /// Further choices of the same prompt (`n` > 1), each with its sampler and its events: the prompt is computed
    /// once, and its KV cache copied to each when it is complete.
    pub siblings: Vec<(Sampler, UnboundedSender<Event>)>,
}

/// Scheduler bounds.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Requests allowed to wait; more are refused (HTTP 429).
    pub max_waiting: usize,
    /// Tokens processed per step (decode tokens plus prompt chunks).
    pub step_tokens: usize,
    /// KV cache bound, in tokens across all sequences.
    pub kv_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { max_batch: 32, max_waiting: 256, step_tokens: 512, kv_tokens: 32_768 }
    }
}

/// Why a request was not queued.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    #[error("too many requests are waiting ({0}); retry later")]
    Overloaded(usize),
    #[error("the engine has stopped")]
    Stopped,
}

/// The handle the HTTP layer holds.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Command>,
    queued: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    max_waiting: usize,
    /// Longest sequence (prompt plus output) the model takes.
    pub max_context: usize,
    /// KV bound in tokens, so requests that could never fit are refused up front.
    pub kv_tokens: usize,
    /// What adapters for this model must fit.
    pub shape: Shape,
    /// Token ids the model embeds (`vocab_size`): a prompt id at or past it is refused before it reaches the model.
    pub vocab: usize,
}

struct Seq {
    tokens: Vec<u32>,
    adapter: Option<Rc<Adapter>>,
    prompt_len: usize,
    cache: SeqCache,
    sampler: Sampler,
    events: UnboundedSender<Event>,
    arrived: Instant,
    last_token: Option<Instant>,
    /// Prompt log probabilities gathered chunk by chunk, until the whole prompt is in.
    prompt_logprobs: Vec<TokenLogprob>,
    /// They were sent (a sequence recomputed after preemption does not send them again).
    prompt_logprobs_sent: bool,
    /// Choices waiting for this sequence's prompt, forked from it when the prompt is in.
    siblings: Vec<(Sampler, UnboundedSender<Event>)>,
}

impl Seq {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
    fn pending(&self) -> usize {
        self.tokens.len() - self.cache.len
    }
    /// Nobody waits for this sequence or for the choices forked from it.
    fn cancelled(&self) -> bool {
        self.events.is_closed() && self.siblings.iter().all(|(_, e)| e.is_closed())
    }
    /// A copy of this sequence, at the end of its prompt, for the choice `sampler` / `events`.
    fn fork(&self, sampler: Sampler, events: UnboundedSender<Event>) -> Seq {
        Seq {
            tokens: self.tokens.clone(),
            adapter: self.adapter.clone(),
            prompt_len: self.prompt_len,
            cache: self.cache.fork(),
            sampler,
            events,
            arrived: self.arrived,
            last_token: None,
            prompt_logprobs: Vec::new(),
            prompt_logprobs_sent: true,
            siblings: Vec::new(),
        }
    }
    /// Whether the next step must read every position of this sequence's chunk (its prompt log probabilities).
    fn reads_prompt(&self) -> bool {
        self.sampler.params().prompt_logprobs.is_some()
            && !self.prompt_logprobs_sent
            && self.cache.len < self.prompt_len
    }
}

/// Builds the model on the engine thread: the decoder and the token ids that end generation.
pub type BuildModel = Box<dyn FnOnce() -> anyhow::Result<(Decoder, Vec<u32>)> + Send>;

/// Builds an adapter on the engine thread.
pub type BuildAdapter = Box<dyn FnOnce() -> anyhow::Result<Adapter> + Send>;

impl Engine {
    /// Start the engine thread for `model` (built elsewhere: tests and tools; a server uses [`Engine::spawn`]).
    pub fn start(model: Decoder, stop_ids: Vec<u32>, config: EngineConfig, metrics: Arc<Metrics>) -> Engine {
        Engine::spawn(None, config, metrics, Box::new(move || Ok((model, stop_ids)))).expect("a built model starts")
    }

    /// Starts the engine thread, builds the model there with `build` and returns once it is built.
    ///
    /// Every libtorch op runs on this one thread, with `threads` intra-op threads (`None`: the current setting).
    /// libgomp gives each thread that runs a parallel op its own worker team and, once its threads outnumber the
    /// CPUs, stops spin-waiting between ops: with the model loaded on another thread, each of a decode step's ~200
    /// parallel matmuls paid a futex wake-up, and 2 threads decoded at half the speed of 1 (perf: 37% of the engine's
    /// samples in the kernel's futex path).
    pub fn spawn(
        threads: Option<i32>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
        build: BuildModel,
    ) -> anyhow::Result<Engine> {
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let (built_tx, built_rx) = mpsc::channel();
        let (q, r, kv_tokens, max_waiting) = (queued.clone(), running.clone(), config.kv_tokens, config.max_waiting);
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                if let Some(t) = threads {
                    tch::set_num_threads(t);
                }
                let (model, stop_ids) = match build() {
                    Ok(built) => built,
                    Err(e) => {
                        let _ = built_tx.send(Err(e));
                        return;
                    }
                };
                let _ = built_tx.send(Ok((model.max_context, Shape::of(&model), model.config.vocab_size)));
                let scheduler = Scheduler {
                    model,
                    adapters: HashMap::new(),
                    stop_ids,
                    config,
                    metrics,
                    queued: q,
                    active: r,
                    waiting: VecDeque::new(),
                    running: Vec::new(),
                };
                scheduler.run(rx)
            })
            .map_err(|e| anyhow::anyhow!("spawning the engine thread: {e}"))?;
        let (max_context, shape, vocab) =
            built_rx.recv().map_err(|_| anyhow::anyhow!("the engine thread stopped while building the model"))??;
        Ok(Engine { tx, queued, running, max_waiting, max_context, kv_tokens, shape, vocab })
    }

    /// Sequences in the running batch and requests waiting, as last seen by the scheduler.
    pub fn load(&self) -> (usize, usize) {
        (self.running.load(Ordering::SeqCst), self.queued.load(Ordering::SeqCst))
    }

    /// Queue a request, or refuse it when the waiting line is full.
    pub fn submit(&self, request: GenRequest) -> Result<(), SubmitError> {
        let waiting = self.queued.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.max_waiting {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Overloaded(waiting));
        }
        self.tx.send(Command::Generate(Box::new(request))).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            SubmitError::Stopped
        })
    }

    /// Builds an adapter with `build` on the engine thread (its tensors stay on the thread that runs libtorch, see
    /// [`Engine::spawn`]); from the answer on, requests may name it.
    pub async fn load_adapter(&self, build: BuildAdapter) -> Result<(), String> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Command::Load(build, done)).map_err(|_| "the engine has stopped".to_string())?;
        answer.await.map_err(|_| "the engine has stopped".to_string())?
    }

    /// Removes the adapter `name`; sequences already using it finish with it.
    pub async fn unload_adapter(&self, name: &str) -> Result<(), String> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Command::Unload(name.to_string(), done)).map_err(|_| "the engine has stopped".to_string())?;
        answer.await.map_err(|_| "the engine has stopped".to_string())?
    }
}

/// What the engine thread is asked to do, in arrival order.
enum Command {
    Generate(Box<GenRequest>),
    Load(BuildAdapter, tokio::sync::oneshot::Sender<Result<(), String>>),
    Unload(String, tokio::sync::oneshot::Sender<Result<(), String>>),
}

struct Scheduler {
    model: Decoder,
    /// Loaded adapters by name; the engine thread owns them (tensors are not shared across threads).
    adapters: HashMap<String, Rc<Adapter>>,
    stop_ids: Vec<u32>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
}

impl Scheduler {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let _no_grad = tch::no_grad_guard();
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                self.active.store(0, Ordering::SeqCst);
                self.metrics.set_queue(0, 0);
                match rx.recv() {
                    Ok(c) => self.command(c),
                    Err(_) => return,
                }
            }
            while let Ok(c) = rx.try_recv() {
                self.command(c);
            }
            self.drop_cancelled();
            self.admit();
            self.metrics.set_queue(self.running.len(), self.waiting.len());
            self.active.store(self.running.len(), Ordering::SeqCst);
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Generate(r) => self.enqueue(*r),
            Command::Load(build, done) => {
                let _ = done.send(match build() {
                    Err(e) => Err(format!("{e:#}")),
                    Ok(adapter) if self.adapters.contains_key(&adapter.name) => {
                        Err(format!("the adapter {:?} is loaded already", adapter.name))
                    }
                    Ok(adapter) => {
                        self.adapters.insert(adapter.name.clone(), Rc::new(adapter));
                        Ok(())
                    }
                });
            }
            Command::Unload(name, done) => {
                let _ = done.send(match self.adapters.remove(&name) {
                    Some(_) => Ok(()),
                    None => Err(format!("no adapter {name:?} is loaded")),
                });
            }
        }
    }

    fn enqueue(&mut self, r: GenRequest) {
        let adapter = match r.adapter.as_deref().map(|name| self.adapters.get(name).cloned().ok_or(name)) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(name)) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                let _ = r.events.send(Event::Failed(format!("the adapter {name:?} was unloaded")));
                return;
            }
        };
        let cache = self.model.new_cache();
        self.waiting.push_back(Seq {
            prompt_len: r.prompt.len(),
            tokens: r.prompt,
            adapter,
            cache,
            sampler: r.sampler,
            events: r.events,
            arrived: Instant::now(),
            last_token: None,
            prompt_logprobs: Vec::new(),
            prompt_logprobs_sent: false,
            siblings: r.siblings,
        });
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|s| !s.cancelled());
        self.queued.fetch_sub(before - self.waiting.len(), Ordering::SeqCst);
        self.running.retain(|s| !s.cancelled());
    }

    fn kv_used(&self) -> usize {
        self.running.iter().map(|s| s.cache.len).sum()
    }

    fn admit(&mut self) {
        while self.running.len() < self.config.max_batch
            && let Some(next) = self.waiting.front()
        {
            // Room for its tokens and its choices' copies of the prompt, plus one decode token for everyone running.
            let need = next.pending() + next.siblings.len() * next.prompt_len + self.running.len() + 1;
            if self.kv_used() + need > self.config.kv_tokens && !self.running.is_empty() {
                break;
            }
            let seq = self.waiting.pop_front().expect("front exists");
            if seq.cache.len == 0 {
                self.metrics.prompt_tokens(seq.prompt_len);
            }
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.running.push(seq);
        }
    }

    /// Free the newest sequences' caches until the step fits the KV bound; they wait at the front to be recomputed.
    fn preempt_to_fit(&mut self, step_tokens: usize) {
        while self.running.len() > 1 && self.kv_used() + step_tokens > self.config.kv_tokens {
            let mut seq = self.running.pop().expect("more than one running");
            seq.cache = self.model.new_cache();
            tracing::debug!(tokens = seq.tokens.len(), "preempted a sequence to stay within the KV bound");
            self.queued.fetch_add(1, Ordering::SeqCst);
            self.waiting.push_front(seq);
        }
    }

    fn step(&mut self) {
        let decode = self.running.iter().filter(|s| s.pending() == 1).count();
        self.preempt_to_fit(decode.max(1));
        // Decode tokens first, then prompt chunks, within the step's token budget and the KV bound.
        let mut budget = self.config.step_tokens.max(self.running.len());
        let mut kv_left = self.config.kv_tokens.saturating_sub(self.kv_used());
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut order: Vec<usize> = (0..self.running.len()).collect();
        order.sort_by_key(|&i| self.running[i].pending() != 1);
        for i in order {
            let pending = self.running[i].pending();
            let take = pending.min(budget).min(kv_left);
            if take == 0 {
                continue;
            }
            plan.push((i, take));
            budget -= take;
            kv_left -= take;
        }
        if plan.is_empty() {
            // One sequence alone no longer fits the KV bound: it ends here.
            let seq = self.running.remove(0);
            let _ = seq.events.send(Event::Finished(FinishReason::Length));
            return;
        }
        plan.sort_by_key(|(i, _)| *i);
        let mut tokens = Vec::new();
        let mut spans = Vec::with_capacity(plan.len());
        // Positions whose logits are read: each span's last, and all of a chunk whose prompt log probabilities were
        // asked for. `reads[k]`: the first row of span k, how many rows it has, and whether they score its prompt.
        let mut rows: Vec<i64> = Vec::with_capacity(plan.len());
        let mut reads = Vec::with_capacity(plan.len());
        for &(i, take) in &plan {
            let s = &self.running[i];
            let start = tokens.len();
            spans.push(Span { start, len: take });
            tokens.extend(s.tokens[s.cache.len..s.cache.len + take].iter().map(|&t| t as i64));
            let prompt = s.reads_prompt();
            let read = if prompt { take } else { 1 };
            reads.push((rows.len(), read, prompt));
            rows.extend((start + take - read..start + take).map(|r| r as i64));
        }
        // Cloned handles: the caches below borrow the sequences mutably.
        let held: Vec<Option<Rc<Adapter>>> = if plan.iter().any(|(i, _)| self.running[*i].adapter.is_some()) {
            plan.iter().map(|(i, _)| self.running[*i].adapter.clone()).collect()
        } else {
            Vec::new()
        };
        let adapters: Vec<Option<&Adapter>> = held.iter().map(|a| a.as_deref()).collect();
        let started = Instant::now();
        let logits = {
            let mut caches: Vec<&mut SeqCache> = Vec::with_capacity(plan.len());
            let mut rest: &mut [Seq] = &mut self.running;
            let mut offset = 0;
            for &(i, _) in &plan {
                let (_, tail) = rest.split_at_mut(i - offset);
                let (seq, tail) = tail.split_first_mut().expect("planned index exists");
                caches.push(&mut seq.cache);
                rest = tail;
                offset = i + 1;
            }
            self.model.forward_rows(&tokens, &spans, &mut caches, &adapters, &rows)
        };
        let vocab = logits.size()[1] as usize;
        let flat: Vec<f32> = match Vec::<f32>::try_from(logits.to_device(tch::Device::Cpu).flatten(0, -1)) {
            Ok(v) => v,
            Err(e) => {
                for seq in self.running.drain(..) {
                    let _ = seq.events.send(Event::Failed(format!("reading logits: {e}")));
                }
                return;
            }
        };
        self.metrics.step(started.elapsed());
        let mut finished = Vec::new();
        let mut forked = Vec::new();
        for (k, &(i, take)) in plan.iter().enumerate() {
            let seq = &mut self.running[i];
            let (first_row, read, prompt) = reads[k];
            if prompt {
                // Every position of the chunk was read (`read == take`); position p's logits score token p + 1, for
                // the prompt's tokens only.
                let from = seq.cache.len - take;
                let top = seq.sampler.params().prompt_logprobs.unwrap_or(0);
                for r in 0..read {
                    let next = from + r + 1;
                    if next < seq.prompt_len {
                        let row = &flat[(first_row + r) * vocab..(first_row + r + 1) * vocab];
                        seq.prompt_logprobs.push(crate::sampling::logprobs(row, seq.tokens[next], top));
                    }
                }
                if seq.cache.len >= seq.prompt_len {
                    seq.prompt_logprobs_sent = true;
                    let scored = std::mem::take(&mut seq.prompt_logprobs);
                    for (_, events) in &seq.siblings {
                        let _ = events.send(Event::PromptLogprobs(scored.clone()));
                    }
                    let _ = seq.events.send(Event::PromptLogprobs(scored));
                }
            }
            if seq.pending() > 0 {
                continue; // A prompt chunk: no token until the whole prompt is in.
            }
            let row = first_row + read - 1;
            let raw = &flat[row * vocab..(row + 1) * vocab];
            // The prompt is in: the other choices start from a copy of its cache and the same logits.
            let ends = Ends { stop_ids: &self.stop_ids, max_context: self.model.max_context, metrics: &self.metrics };
            for (sampler, events) in std::mem::take(&mut seq.siblings) {
                let mut sibling = seq.fork(sampler, events);
                if !ends.emit(&mut sibling, raw) {
                    forked.push(sibling);
                }
            }
            if ends.emit(seq, raw) {
                finished.push(i);
            }
        }
        for i in finished.into_iter().rev() {
            self.running.remove(i);
        }
        self.running.extend(forked);
    }
}

/// What decides a sequence's end, borrowed from the scheduler while its sequences are borrowed mutably.
struct Ends<'a> {
    stop_ids: &'a [u32],
    max_context: usize,
    metrics: &'a Metrics,
}

impl Ends<'_> {
    /// Samples `seq`'s next token from `raw` (the model's logits) and tells its client; true when the sequence is
    /// over (a stop, its length, a fault, or a client gone).
    fn emit(&self, seq: &mut Seq, raw: &[f32]) -> bool {
        let mut row_logits = raw.to_vec();
        let token = match seq.sampler.sample(&mut row_logits) {
            Ok(t) => t,
            Err(e) => {
                let _ = seq.events.send(Event::Failed(e));
                return true;
            }
        };
        // From the model's logits, before the sampler's penalties changed them.
        let logprob = seq.sampler.params().logprobs.map(|top| crate::sampling::logprobs(raw, token, top));
        seq.tokens.push(token);
        let now = Instant::now();
        match seq.last_token {
            None => self.metrics.first_token(now - seq.arrived),
            Some(prev) => self.metrics.inter_token(now - prev),
        }
        seq.last_token = Some(now);
        self.metrics.generated(1);
        let eos = self.stop_ids.contains(&token);
        // EOS, or the end of the request's grammar (structured output).
        let reason = if (eos && !seq.sampler.params().ignore_eos) || seq.sampler.grammar_done() {
            Some(FinishReason::Stop)
        } else if seq.generated() >= seq.sampler.params().max_tokens || seq.tokens.len() >= self.max_context {
            Some(FinishReason::Length)
        } else {
            None
        };
        // EOS ends the text unsent; the token completing a grammar is text.
        let sent = if reason == Some(FinishReason::Stop) && eos {
            true
        } else {
            seq.events.send(Event::Token(token, logprob)).is_ok()
        };
        if let Some(r) = reason {
            let _ = seq.events.send(Event::Finished(r));
            return true;
        }
        !sent // The client went away: free the sequence now.
    }
}
