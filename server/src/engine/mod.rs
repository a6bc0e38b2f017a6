//! The engine thread: the single owner of the scheduler, the block manager, the KV cache (inside the
//! [`StepModel`]) and every request's sampler. HTTP handlers hold a cloneable [`EngineHandle`] that sends
//! Submit/Abort; each request carries its own reply channel. A closed reply channel means the client left: the
//! request is aborted and its blocks freed before the next step spends compute on it.
//!
//! One step is schedule → forward → sample → update → send token events.

pub mod queue;
mod runner;
pub mod tp;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::api::validate::{Sampling, ValidRequest};
use crate::batch::BatchInput;
use crate::metrics::Metrics;
use crate::sampler::{Sampled, Sampler, SamplingParams};
use crate::scheduler::{FinishReason, RequestId, Scheduler, SeqRequest};

pub use queue::{CompletionLog, retry_after_secs};
pub use runner::{ModelRunner, self_check};
pub use tp::{CacheSpec, TpGroup};

/// Runs one flat batch. Implemented by the real model + KV cache ([`ModelRunner`]) and by test fakes.
pub trait StepModel: Send + 'static {
    /// One logits row per sequence with `wants_logits`, in `batch.seqs` order.
    fn step(&mut self, batch: &BatchInput) -> candle_core::Result<Vec<Vec<f32>>>;
}

/// What a request's reply channel receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One sampled token of choice `index`; `finish` is set on the choice's last token.
    Token {
        index: usize,
        sampled: Sampled,
        finish: Option<FinishReason>,
    },
    /// The step failed; the request is over.
    Failed(String),
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("queue full ({queued} waiting)")]
    QueueFull { queued: usize, retry_after_s: u64 },
    #[error("draining")]
    Draining,
    #[error("the engine has stopped")]
    Stopped,
}

enum Command {
    Submit(Box<Submission>),
    /// Ends one choice (`Some(index)`) or every choice of a request (stop string matched, or the handler gave up).
    Abort(u64, Option<usize>, FinishReason),
    /// Fails every request in flight with this message (the drain deadline passed).
    FailAll(String),
}

struct Submission {
    id: u64,
    req: ValidRequest,
    reply: UnboundedSender<Event>,
    arrival: Instant,
}

#[derive(Debug)]
struct Shared {
    /// Submitted but not yet taken by the engine thread.
    pending: AtomicUsize,
    /// Sequences waiting in the scheduler (published by the engine after each step).
    waiting: AtomicUsize,
    running: AtomicUsize,
    /// Requests submitted and not yet finished.
    in_flight: AtomicUsize,
    draining: AtomicBool,
    next_id: AtomicUsize,
    completions: Mutex<CompletionLog>,
}

/// Engine limits that are not the scheduler's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Most requests waiting (submitted, not running) before new ones get 429.
    pub max_queue: usize,
}

/// Cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    config: EngineConfig,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("config", &self.config)
            .finish()
    }
}

impl EngineHandle {
    /// Queues a request; the receiver gets its token events.
    pub fn submit(
        &self,
        req: ValidRequest,
    ) -> Result<(u64, UnboundedReceiver<Event>), SubmitError> {
        if self.shared.draining.load(Ordering::SeqCst) {
            return Err(SubmitError::Draining);
        }
        let queued = self.queue_len();
        if queued >= self.config.max_queue {
            let now = Instant::now();
            let (done, window) = self
                .shared
                .completions
                .lock()
                .map(|mut l| l.recent(now))
                .unwrap_or_default();
            return Err(SubmitError::QueueFull {
                queued,
                retry_after_s: retry_after_secs(queued, done, window),
            });
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::SeqCst) as u64;
        let (reply, rx) = unbounded_channel();
        self.shared.pending.fetch_add(1, Ordering::SeqCst);
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let sub = Submission {
            id,
            req,
            reply,
            arrival: Instant::now(),
        };
        if self.tx.send(Command::Submit(Box::new(sub))).is_err() {
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Stopped);
        }
        Ok((id, rx))
    }

    /// Ends a request (all its choices) with `reason`; unknown ids are ignored.
    pub fn abort(&self, id: u64, reason: FinishReason) {
        let _ = self.tx.send(Command::Abort(id, None, reason));
    }

    /// Fails every request in flight with `why` (each gets [`Event::Failed`], its blocks are freed).
    pub fn fail_all(&self, why: &str) {
        let _ = self.tx.send(Command::FailAll(why.to_owned()));
    }

    /// Ends choice `index` of a request (a stop string matched); the other choices go on.
    pub fn abort_choice(&self, id: u64, index: usize, reason: FinishReason) {
        let _ = self.tx.send(Command::Abort(id, Some(index), reason));
    }

    /// Requests waiting (not yet running), including ones not yet seen by the engine thread.
    pub fn queue_len(&self) -> usize {
        self.shared.pending.load(Ordering::SeqCst) + self.shared.waiting.load(Ordering::SeqCst)
    }

    pub fn num_running(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// Requests accepted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Refuse new requests from now on.
    pub fn start_draining(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }
}

/// One choice (scheduler sequence) of a request.
struct Choice {
    request: u64,
    index: usize,
    sampler: Sampler,
    /// The request's output constraint, this choice's own parser state.
    constraint: Option<crate::guided::Constraint>,
    generated: Vec<u32>,
    scheduled_once: bool,
    last_token_at: Option<Instant>,
}

/// One request: its reply channel and its choices still running.
struct Live {
    reply: UnboundedSender<Event>,
    arrival: Instant,
    seq_ids: Vec<RequestId>,
    prompt_tokens: usize,
    first_token: bool,
}

/// The engine state owned by the engine thread.
pub struct Engine<M: StepModel> {
    model: M,
    scheduler: Scheduler,
    metrics: Metrics,
    shared: Arc<Shared>,
    choices: HashMap<RequestId, Choice>,
    requests: HashMap<u64, Live>,
    next_seq: RequestId,
}

/// The seed of choice `index` of a request seeded `seed`: choice 0 uses the seed itself; the others a
/// SplitMix64 mix of (seed, index), so choice i of seed S is not choice 0 of seed S + i.
fn choice_seed(seed: u64, index: usize) -> u64 {
    if index == 0 {
        return seed;
    }
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn sampling_params(s: &Sampling, index: usize, logprobs: Option<usize>) -> SamplingParams {
    SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        logit_bias: s.logit_bias.clone(),
        seed: choice_seed(s.seed.unwrap_or_else(rand::random), index),
        top_logprobs: logprobs.unwrap_or(0),
        logprobs: logprobs.is_some(),
    }
}

impl<M: StepModel> Engine<M> {
    /// Starts the engine thread. It runs until every handle is dropped.
    /// `make_scheduler` runs on the engine thread (the block pool is single-threaded by design).
    pub fn spawn(
        model: M,
        make_scheduler: impl FnOnce() -> Scheduler + Send + 'static,
        metrics: Metrics,
        config: EngineConfig,
    ) -> std::io::Result<(EngineHandle, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            pending: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            next_id: AtomicUsize::new(1),
            completions: Mutex::new(CompletionLog::default()),
        });
        let engine_shared = Arc::clone(&shared);
        let join = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let scheduler = make_scheduler();
                metrics
                    .kv_blocks_total
                    .set(scheduler.blocks().num_blocks() as i64);
                let engine = Engine {
                    model,
                    scheduler,
                    metrics,
                    shared: engine_shared,
                    choices: HashMap::new(),
                    requests: HashMap::new(),
                    next_seq: 1,
                };
                engine.run(rx)
            })?;
        Ok((EngineHandle { tx, shared, config }, join))
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            if !self.scheduler.has_work() {
                match rx.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            self.abort_disconnected();
            if self.scheduler.has_work() {
                self.step();
            }
            self.publish();
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(sub) => {
                self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                self.add(*sub);
            }
            Command::Abort(id, None, reason) => self.finish_request(id, reason),
            Command::Abort(id, Some(index), reason) => self.finish_choice(id, index, reason),
            Command::FailAll(why) => {
                let ids: Vec<u64> = self.requests.keys().copied().collect();
                for id in ids {
                    if let Some(live) = self.requests.get(&id) {
                        let _ = live.reply.send(Event::Failed(why.clone()));
                    }
                    self.finish_request(id, FinishReason::Abort);
                }
            }
        }
    }

    fn add(&mut self, sub: Submission) {
        let Submission {
            id,
            req,
            reply,
            arrival,
        } = sub;
        let mut seq_ids = Vec::with_capacity(req.n);
        for index in 0..req.n {
            let seq = self.next_seq;
            self.next_seq += 1;
            let added = self.scheduler.add(SeqRequest {
                id: seq,
                prompt: req.prompt_tokens.clone(),
                max_tokens: req.max_tokens,
                stop_token_ids: req.stop_token_ids.clone(),
            });
            if let Err(e) = added {
                for s in &seq_ids {
                    self.scheduler.abort(*s);
                    self.choices.remove(s);
                }
                let _ = reply.send(Event::Failed(e.to_string()));
                self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            let params = sampling_params(&req.sampling, index, req.logprobs);
            let choice = Choice {
                request: id,
                index,
                sampler: Sampler::new(params),
                constraint: req.guide.clone(),
                generated: Vec::new(),
                scheduled_once: false,
                last_token_at: None,
            };
            self.choices.insert(seq, choice);
            seq_ids.push(seq);
        }
        let live = Live {
            reply,
            arrival,
            seq_ids,
            prompt_tokens: req.prompt_tokens.len(),
            first_token: false,
        };
        self.requests.insert(id, live);
    }

    /// Ends every remaining choice of request `id` with `reason`, freeing blocks; the request is then done.
    fn finish_request(&mut self, id: u64, reason: FinishReason) {
        let Some(live) = self.requests.remove(&id) else {
            return;
        };
        for seq in &live.seq_ids {
            self.scheduler.abort(*seq);
            self.choices.remove(seq);
        }
        self.metrics
            .request_success
            .with_label_values(&[reason.as_str()])
            .inc();
        self.complete(&live);
    }

    /// Ends one choice; the request completes when it was the last.
    fn finish_choice(&mut self, id: u64, index: usize, reason: FinishReason) {
        let Some(live) = self.requests.get_mut(&id) else {
            return;
        };
        let choices = &self.choices;
        let Some(pos) = live
            .seq_ids
            .iter()
            .position(|s| choices.get(s).is_some_and(|c| c.index == index))
        else {
            return;
        };
        let seq = live.seq_ids.remove(pos);
        self.scheduler.abort(seq);
        self.choices.remove(&seq);
        if live.seq_ids.is_empty()
            && let Some(live) = self.requests.remove(&id)
        {
            self.metrics
                .request_success
                .with_label_values(&[reason.as_str()])
                .inc();
            self.complete(&live);
        }
    }

    fn complete(&mut self, live: &Live) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.metrics
            .e2e_request_latency
            .observe(live.arrival.elapsed().as_secs_f64());
        if let Ok(mut log) = self.shared.completions.lock() {
            log.record(Instant::now());
        }
    }

    fn abort_disconnected(&mut self) {
        let gone: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, l)| l.reply.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.finish_request(id, FinishReason::Abort);
        }
    }

    fn step(&mut self) {
        let out = self.scheduler.schedule();
        self.metrics.preemptions.inc_by(out.preempted.len() as u64);
        if out.is_empty() {
            return;
        }
        let now = Instant::now();
        for s in &out.scheduled {
            if let Some(c) = self.choices.get_mut(&s.id)
                && !c.scheduled_once
            {
                c.scheduled_once = true;
                if let Some(live) = self.requests.get(&c.request) {
                    self.metrics
                        .request_queue_time
                        .observe(now.duration_since(live.arrival).as_secs_f64());
                    if c.index == 0 {
                        self.metrics.prompt_tokens.inc_by(live.prompt_tokens as u64);
                    }
                }
            }
        }
        self.metrics
            .tokens_per_step
            .observe(out.num_batched_tokens() as f64);
        // The constrained sequences' next-token masks (they depend on tokens already consumed) are computed
        // on a helper thread while the forward pass runs, off the step's critical path.
        let (model, choices) = (&mut self.model, &mut self.choices);
        let mut pending: Vec<&mut crate::guided::Constraint> =
            if choices.values().any(|c| c.constraint.is_some()) {
                let sampling: std::collections::HashSet<RequestId> = out.sampling_ids().collect();
                choices
                    .iter_mut()
                    .filter(|(id, _)| sampling.contains(*id))
                    .filter_map(|(_, c)| c.constraint.as_mut())
                    .collect()
            } else {
                Vec::new()
            };
        let stepped = if pending.is_empty() {
            model.step(&out.batch)
        } else {
            std::thread::scope(|sc| {
                sc.spawn(|| pending.iter_mut().for_each(|g| g.prepare()));
                model.step(&out.batch)
            })
        };
        let logits = match stepped {
            Ok(l) => l,
            Err(e) => {
                // candle attaches a backtrace when RUST_BACKTRACE is set: clients get the cause only
                let e = crate::device::without_backtrace(e);
                tracing::error!(error = %e, "model step failed; failing the batch");
                let reqs: Vec<u64> = out
                    .scheduled
                    .iter()
                    .filter_map(|s| self.choices.get(&s.id).map(|c| c.request))
                    .collect();
                for id in reqs {
                    if let Some(live) = self.requests.get(&id) {
                        let _ = live
                            .reply
                            .send(Event::Failed(format!("model step failed: {e}")));
                    }
                    self.finish_request(id, FinishReason::Abort);
                }
                return;
            }
        };
        let mut sampled = Vec::with_capacity(logits.len());
        let mut broken: Vec<(u64, String)> = Vec::new();
        for (id, row) in out.sampling_ids().zip(&logits) {
            let s = match self.choices.get_mut(&id) {
                Some(c) => match c.constraint.as_mut() {
                    // the grammar's mask goes on before penalties, temperature and truncation
                    Some(g) => {
                        let mut row = row.clone();
                        let masked = g.mask(&mut row);
                        if let Some(t) = g.take_mask_time() {
                            self.metrics.guided_mask_seconds.observe(t.as_secs_f64());
                        }
                        if let Err(e) = masked {
                            broken.push((c.request, format!("output constraint: {e}")));
                        }
                        c.sampler.sample(&row, &c.generated)
                    }
                    None => c.sampler.sample(row, &c.generated),
                },
                None => Sampled {
                    token: 0,
                    logprob: 0.0,
                    top_logprobs: Vec::new(),
                },
            };
            sampled.push(s);
        }
        let tokens: Vec<u32> = sampled.iter().map(|s| s.token).collect();
        let updates = self.scheduler.update(&out, &tokens);
        // a grammar that cannot go on (its step limits hit, or nothing allowed): the request fails with
        // the reason rather than emit text outside its constraint (its choices are gone before the
        // updates below are sent)
        for (id, why) in broken {
            tracing::warn!(request = id, error = %why, "constrained request failed");
            if let Some(live) = self.requests.get(&id) {
                let _ = live.reply.send(Event::Failed(why));
            }
            self.finish_request(id, FinishReason::Abort);
        }
        let now = Instant::now();
        let mut by_id: HashMap<RequestId, Sampled> = out.sampling_ids().zip(sampled).collect();
        for u in updates {
            let Some(choice) = self.choices.get_mut(&u.id) else {
                continue;
            };
            let Some(sampled) = by_id.remove(&u.id) else {
                continue;
            };
            choice.generated.push(u.token);
            if let Some(g) = choice.constraint.as_mut()
                && u.finish.is_none()
                && let Err(e) = g.consume(u.token)
            {
                tracing::warn!(error = %e, "constrained choice: token not accepted");
            }
            self.metrics.generation_tokens.inc();
            if let Some(prev) = choice.last_token_at.replace(now) {
                self.metrics
                    .inter_token_latency
                    .observe(now.duration_since(prev).as_secs_f64());
            }
            let (request, index) = (choice.request, choice.index);
            let Some(live) = self.requests.get_mut(&request) else {
                continue;
            };
            if !live.first_token {
                live.first_token = true;
                self.metrics
                    .time_to_first_token
                    .observe(now.duration_since(live.arrival).as_secs_f64());
            }
            let _ = live.reply.send(Event::Token {
                index,
                sampled,
                finish: u.finish,
            });
            if let Some(reason) = u.finish {
                self.choices.remove(&u.id);
                live.seq_ids.retain(|&s| s != u.id);
                if live.seq_ids.is_empty()
                    && let Some(live) = self.requests.remove(&request)
                {
                    // The last choice's reason labels the request.
                    self.metrics
                        .request_success
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    self.complete(&live);
                }
            }
        }
    }

    fn publish(&self) {
        let s = &self.scheduler;
        self.shared.waiting.store(s.num_waiting(), Ordering::SeqCst);
        self.shared.running.store(s.num_running(), Ordering::SeqCst);
        let m = &self.metrics;
        m.requests_waiting
            .set((s.num_waiting() + self.shared.pending.load(Ordering::SeqCst)) as i64);
        m.requests_running.set(s.num_running() as i64);
        let b = s.blocks();
        m.kv_cache_usage.set(b.usage());
        m.kv_blocks_used.set(b.num_used() as i64);
        let (allocated, filled) = s.kv_slot_usage();
        if allocated > 0 {
            m.kv_cache_waste
                .set((allocated - filled) as f64 / allocated as f64);
        }
        let st = b.stats();
        m.prefix_cache_queries.inc_by(
            st.prefix_query_tokens
                .saturating_sub(m.prefix_cache_queries.get()),
        );
        m.prefix_cache_hits.inc_by(
            st.prefix_hit_tokens
                .saturating_sub(m.prefix_cache_hits.get()),
        );
    }
}

#[cfg(test)]
mod tests;
