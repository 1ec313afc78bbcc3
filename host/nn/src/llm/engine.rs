//! The llama.cpp side of a language model (through `llama-cpp-2`): loading a GGUF file, its chat
//! template and tokenizer, and the decode thread that runs every generation of the model.
//!
//! The decode thread owns the llama.cpp context, whose KV cache holds one sequence per
//! `concurrency` (each with `context` tokens of its own). Each step it admits waiting
//! generations into free sequences, drops the cancelled and timed-out ones, and decodes one
//! batch: the next token of every generating sequence first, then up to [`PREFILL_TOKENS`] of
//! the admitted prompts (a long prompt prefills over several steps while the others go on
//! generating, and a step stays short enough that a cancel is seen soon). One tenant holds at
//! most all sequences but one, so another tenant never waits for a whole generation of it.
//! Then it samples one token per sequence with that generation's own sampler chain and hands
//! the text to its reader.
//!
//! Prompt cache: a finished sequence keeps its tokens in the KV cache. A new generation goes to
//! the free sequence whose kept tokens share the longest prefix with its prompt, among those
//! the same tenant left (never another tenant's: how fast a prompt starts must not tell what
//! others asked), and prefills only the rest. A repeated system prompt or the next turn of a
//! chat then starts in one step.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::text::{Fed, TextAssembler};
use super::{FinishReason, Job, LlmError, Prompt, Sampling, Shared};
use crate::{ModelSpec, Target};

/// Tokens one decode step holds at most (generating sequences plus prompt chunks).
const BATCH_TOKENS: u32 = 512;
/// Prompt tokens one step prefills at most.
const PREFILL_TOKENS: usize = 256;
/// Repetition penalty looks this far back.
const PENALTY_LAST_N: i32 = 64;
/// How long the decode thread sleeps between checks when it has nothing to do.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// llama.cpp's global state, initialised once per process.
fn backend() -> anyhow::Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("initialising llama.cpp: {e}"))
}

/// The loaded model, shared by the decode thread and the callers that tokenize.
pub(super) struct Engine {
    model: Arc<LlamaModel>,
    template: Option<LlamaChatTemplate>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Engine {
    /// Loads the model, creates its context on a new decode thread, and says what runs it.
    pub(super) fn start(spec: &ModelSpec, shared: Arc<Shared>) -> anyhow::Result<(Self, String)> {
        let backend = backend()?;
        let mut params = LlamaModelParams::default();
        if spec.target == Target::Gpu {
            anyhow::ensure!(
                backend.supports_gpu_offload(),
                "target = \"gpu\", but this build of llama.cpp has no GPU backend \
                 (build infergate with the `llamacpp-cuda` feature)"
            );
            params = params.with_n_gpu_layers(u32::MAX >> 1);
        }
        let model = LlamaModel::load_from_file(backend, &spec.path, &params)
            .with_context(|| format!("loading the GGUF file {}", spec.path.display()))?;
        let model = Arc::new(model);
        let template = model.chat_template(None).ok();
        let sequences = u32::try_from(spec.concurrency.clamp(1, 64)).unwrap_or(1);
        let context = spec.llm.context.max(16);
        anyhow::ensure!(
            context <= model.n_ctx_train(),
            "context = {context} is more than the model was trained for ({})",
            model.n_ctx_train()
        );
        let threads = spec.llm.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get() as i32),
            |t| t.max(1) as i32,
        );
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(context * sequences))
            .with_n_batch(BATCH_TOKENS)
            .with_n_ubatch(BATCH_TOKENS)
            .with_n_seq_max(sequences)
            .with_kv_unified(false)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let description = format!(
            "llama.cpp ({}, {} sequences x {context} tokens, {threads} threads{})",
            spec.target,
            sequences,
            if template.is_some() {
                ""
            } else {
                ", no chat template"
            }
        );

        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (thread_model, thread_shared) = (model.clone(), shared.clone());
        let name = spec.name.clone();
        let timeout = spec.timeout;
        let queue_timeout = spec.queue_timeout;
        let thread = std::thread::Builder::new()
            .name(format!("llm-{}", spec.name))
            .spawn(move || {
                let ctx = match thread_model.new_context(backend, ctx_params) {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        let _ = started_tx.send(Err(format!("creating the context: {e}")));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                Decoder {
                    model: &thread_model,
                    ctx,
                    shared: &thread_shared,
                    slots: (0..sequences).map(|_| None).collect(),
                    kept: (0..sequences).map(|_| None).collect(),
                    batch: LlamaBatch::new(BATCH_TOKENS as usize, 1),
                    name,
                    context,
                    timeout,
                    queue_timeout,
                }
                .run();
            })
            .context("starting the decode thread")?;
        started_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the decode thread ended while starting"))?
            .map_err(anyhow::Error::msg)?;
        Ok((
            Engine {
                model,
                template,
                shared,
                thread: Some(thread),
            },
            description,
        ))
    }

    pub(super) fn tokenize(&self, prompt: &Prompt) -> Result<Vec<i32>, LlmError> {
        let text = match prompt {
            Prompt::Raw(text) => text.clone(),
            Prompt::Chat(messages) => {
                let template = self.template.as_ref().ok_or_else(|| {
                    LlmError::InvalidRequest(
                        "this model has no chat template: send a raw prompt".into(),
                    )
                })?;
                let messages = messages
                    .iter()
                    .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        LlmError::InvalidRequest(format!("a message cannot be rendered: {e}"))
                    })?;
                self.model
                    .apply_chat_template(template, &messages, true)
                    .map_err(|e| {
                        LlmError::InvalidRequest(format!(
                            "the messages do not fit the model's chat template: {e}"
                        ))
                    })?
            }
        };
        // Chat templates mark turns with special tokens, which must parse as such.
        let parse_special = matches!(prompt, Prompt::Chat(_));
        let tokens = crate::catch_panic(|| {
            self.model
                .vocab()
                .tokenize(text.as_bytes(), true, parse_special)
        })
        .map_err(LlmError::Backend)?;
        if tokens.is_empty() {
            return Err(LlmError::InvalidRequest("the prompt is empty".into()));
        }
        Ok(tokens.into_iter().map(|t| t.0).collect())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One sequence of the context, holding a generation.
struct Slot {
    job: Job,
    sampler: LlamaSampler,
    text: TextAssembler,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// The prompt, then every token sampled: what the KV cache holds up to `position`.
    history: Vec<i32>,
    /// The last token sampled, to decode next (once the prompt is in).
    next: Option<LlamaToken>,
    /// Its position in the sequence.
    position: i32,
    /// Where this sequence's logits are in the batch just decoded.
    logits_at: Option<i32>,
    last_token_at: Option<Instant>,
    deadline: Instant,
}

/// The tokens a free sequence still holds in the KV cache, and whose they are.
struct Kept {
    tenant: Arc<str>,
    tokens: Vec<i32>,
}

struct Decoder<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    shared: &'m Shared,
    /// Index = llama.cpp sequence id.
    slots: Vec<Option<Slot>>,
    /// What each free sequence still holds in the KV cache (index = sequence id).
    kept: Vec<Option<Kept>>,
    batch: LlamaBatch<'static>,
    name: String,
    context: u32,
    timeout: Duration,
    queue_timeout: Duration,
}

impl Decoder<'_> {
    fn run(mut self) {
        loop {
            if !self.admit() {
                return;
            }
            if self.slots.iter().all(Option::is_none) {
                continue;
            }
            self.drop_finished_before_step();
            if self.fill_batch() == 0 {
                continue;
            }
            let started = Instant::now();
            let decoded = crate::catch_panic(|| self.ctx.decode(&mut self.batch));
            self.shared.stats.step(started.elapsed());
            match decoded {
                Ok(Ok(())) => self.sample(),
                Ok(Err(e)) => self.fail_batch(format!("decoding failed: {e}")),
                Err(panic) => self.fail_batch(format!("llama.cpp panicked: {panic}")),
            }
        }
    }

    /// Ends queued generations that were cancelled or waited too long, fills free sequences,
    /// and sleeps while there is nothing at all to do. False when the model is being dropped.
    fn admit(&mut self) -> bool {
        let mut waiting = self
            .shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        loop {
            if waiting.closed {
                return false;
            }
            let queue_timeout = self.queue_timeout;
            for job in waiting.drain_where(|j| {
                j.out.cancelled.load(Ordering::Acquire) || j.enqueued.elapsed() > queue_timeout
            }) {
                if job.out.cancelled.load(Ordering::Acquire) {
                    self.shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                    job.out.end(Err(LlmError::QueueTimeout {
                        model: self.name.clone(),
                        after: queue_timeout,
                    }));
                }
            }
            let cap = self.slots.len().saturating_sub(1).max(1);
            while self.slots.iter().any(Option::is_none) {
                let held = |tenant: &str| {
                    self.slots
                        .iter()
                        .flatten()
                        .filter(|s| &*s.job.tenant == tenant)
                        .count()
                };
                let Some(job) = waiting.pop(|tenant| held(tenant) < cap) else {
                    break;
                };
                let (seq, reused) = self.sequence_for(&job);
                self.slots[seq] = Some(self.slot_for(job, reused));
                self.shared.stats.started.fetch_add(1, Ordering::Relaxed);
                self.shared.stats.active.fetch_add(1, Ordering::Relaxed);
            }
            if self.slots.iter().any(Option::is_some) {
                return true;
            }
            waiting = self
                .shared
                .wake
                .wait_timeout(waiting, IDLE_WAIT)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// The free sequence for `job`, and how many of its prompt tokens that sequence's KV cache
    /// already holds: the longest shared prefix among what the same tenant left, else a
    /// sequence holding nothing (or another tenant's, cleared first). One prompt token is
    /// always decoded again, since its logits give the first token.
    fn sequence_for(&mut self, job: &Job) -> (usize, usize) {
        let free = || (0..self.slots.len()).filter(|&seq| self.slots[seq].is_none());
        let shared_prefix = |seq: usize| match &self.kept[seq] {
            Some(kept) if kept.tenant == job.tenant => kept
                .tokens
                .iter()
                .zip(&job.tokens)
                .take_while(|(a, b)| a == b)
                .count()
                .min(job.tokens.len() - 1),
            _ => 0,
        };
        let (seq, reused) = free()
            .map(|seq| (seq, shared_prefix(seq)))
            .max_by_key(|&(seq, n)| (n, self.kept[seq].is_none()))
            .expect("called with a free sequence");
        let cleared = self.kept[seq].take().is_none_or(|kept| {
            let from = (reused > 0).then_some(reused as u32);
            self.ctx
                .clear_kv_cache_seq(Some(seq as u32), from, None)
                .map_err(|e| tracing::warn!(model = %self.name, "clearing sequence {seq}: {e}"))
                .is_ok_and(|removed| removed)
                && kept.tokens.len() >= reused
        });
        if !cleared {
            // Nothing is known about what this sequence holds now: start it from scratch.
            let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
            return (seq, 0);
        }
        if reused > 0 {
            self.shared
                .stats
                .prompt_cached
                .fetch_add(reused as u64, Ordering::Relaxed);
        }
        (seq, reused)
    }

    fn slot_for(&self, job: Job, reused: usize) -> Slot {
        let deadline = job.enqueued + self.timeout;
        Slot {
            sampler: sampler_for(&job.sampling, self.model.n_vocab()),
            text: TextAssembler::new(job.sampling.stop.clone()),
            history: job.tokens.clone(),
            job,
            prefilled: reused,
            next: None,
            position: reused as i32,
            logits_at: None,
            last_token_at: None,
            deadline,
        }
    }

    /// Frees the sequences whose reader is gone or whose time is up.
    fn drop_finished_before_step(&mut self) {
        let now = Instant::now();
        for seq in 0..self.slots.len() {
            let Some(slot) = &self.slots[seq] else {
                continue;
            };
            if slot.job.out.cancelled.load(Ordering::Acquire) {
                self.shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                self.free(seq, None);
            } else if now > slot.deadline {
                self.free(
                    seq,
                    Some(Err(LlmError::Timeout {
                        model: self.name.clone(),
                        after: self.timeout,
                    })),
                );
            }
        }
    }

    /// Puts one token per generating sequence into the batch, then prompt chunks; returns how
    /// many tokens it holds.
    fn fill_batch(&mut self) -> usize {
        self.batch.clear();
        let mut room = BATCH_TOKENS as usize;
        for (seq, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            slot.logits_at = None;
            if let Some(token) = slot.next
                && room > 0
                && self
                    .batch
                    .add(token, slot.position, &[seq as i32], true)
                    .is_ok()
            {
                slot.logits_at = Some(self.batch.n_tokens() - 1);
                room -= 1;
            }
        }
        let mut room = room.min(PREFILL_TOKENS);
        for (seq, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            let prompt = &slot.job.tokens;
            if slot.next.is_some() || slot.prefilled >= prompt.len() {
                continue;
            }
            let take = (prompt.len() - slot.prefilled).min(room);
            for i in 0..take {
                let at = slot.prefilled + i;
                let last = at + 1 == prompt.len();
                if self
                    .batch
                    .add(LlamaToken(prompt[at]), at as i32, &[seq as i32], last)
                    .is_err()
                {
                    break;
                }
                if last {
                    slot.logits_at = Some(self.batch.n_tokens() - 1);
                }
            }
            slot.prefilled += take;
            slot.position = slot.prefilled as i32;
            room -= take;
            if slot.prefilled == prompt.len() {
                let (tenant, plugin) = (slot.job.tenant.clone(), slot.job.plugin.clone());
                self.shared
                    .stats
                    .tokens(&tenant, &plugin, prompt.len() as u64, 0);
            }
        }
        self.batch.n_tokens() as usize
    }

    /// Samples the next token of every sequence whose logits the step produced.
    fn sample(&mut self) {
        let vocab = self.model.vocab();
        for seq in 0..self.slots.len() {
            let Some(slot) = &mut self.slots[seq] else {
                continue;
            };
            let Some(at) = slot.logits_at.take() else {
                continue;
            };
            if slot.job.out.cancelled.load(Ordering::Acquire) {
                // Its reader left while this step ran: the one token decoded after a cancel.
                self.shared
                    .stats
                    .decoded_after_cancel
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let now = Instant::now();
            match slot.last_token_at {
                None => self
                    .shared
                    .stats
                    .first_token(now.duration_since(slot.job.enqueued)),
                Some(last) => self.shared.stats.next_token(now.duration_since(last)),
            }
            slot.last_token_at = Some(now);
            if slot.next.is_some() {
                slot.position += 1;
            }
            let token = slot.sampler.sample(&self.ctx, at);
            if vocab.is_eog(token) {
                let rest = slot.text.finish();
                slot.job.out.push(&rest);
                self.free(seq, Some(Ok(FinishReason::Stop)));
                continue;
            }
            let completion = slot.job.out.completion.fetch_add(1, Ordering::Relaxed) + 1;
            self.shared
                .stats
                .tokens(&slot.job.tenant, &slot.job.plugin, 0, 1);
            let piece = vocab.token_to_piece(token, false, None);
            match slot.text.feed(&piece) {
                Fed::Stopped(text) => {
                    slot.job.out.push(&text);
                    self.free(seq, Some(Ok(FinishReason::Stop)));
                    continue;
                }
                Fed::Text(text) => slot.job.out.push(&text),
            }
            let full = slot.position as u32 + 1 >= self.context;
            if completion >= slot.job.max_tokens || full {
                let rest = slot.text.finish();
                slot.job.out.push(&rest);
                self.free(seq, Some(Ok(FinishReason::Length)));
                continue;
            }
            slot.history.push(token.0);
            slot.next = Some(token);
        }
    }

    fn fail_batch(&mut self, why: String) {
        tracing::error!(model = %self.name, "{why}");
        for seq in 0..self.slots.len() {
            if self.slots[seq]
                .as_ref()
                .is_some_and(|s| s.logits_at.is_some() || s.next.is_none())
            {
                self.free(seq, Some(Err(LlmError::Backend(why.clone()))));
            }
        }
    }

    /// Ends the generation in sequence `seq` (`None`: cancelled, nobody to tell) and clears
    /// its part of the KV cache.
    fn free(&mut self, seq: usize, end: Option<Result<FinishReason, LlmError>>) {
        let Some(slot) = self.slots[seq].take() else {
            return;
        };
        let stats = &self.shared.stats;
        match &end {
            Some(Ok(FinishReason::Stop)) => stats.finished_stop.fetch_add(1, Ordering::Relaxed),
            Some(Ok(FinishReason::Length)) => stats.finished_length.fetch_add(1, Ordering::Relaxed),
            Some(Err(_)) => stats.failed.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        stats.active.fetch_sub(1, Ordering::Relaxed);
        // After a failed decode nothing is known about what the sequence holds.
        let consistent = !matches!(end, Some(Err(LlmError::Backend(_))));
        if let Some(end) = end {
            slot.job.out.end(end);
        }
        if consistent {
            let mut tokens = slot.history;
            tokens.truncate(slot.position.max(0) as usize);
            self.kept[seq] = Some(Kept {
                tenant: slot.job.tenant,
                tokens,
            });
        } else if let Err(e) = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None) {
            tracing::warn!(model = %self.name, "clearing sequence {seq}: {e}");
        }
    }
}

/// The sampler chain for one generation's parameters (defaults: llama.cpp's).
fn sampler_for(s: &Sampling, n_vocab: i32) -> LlamaSampler {
    let mut chain = Vec::new();
    if let Some(penalty) = s.repetition_penalty
        && penalty != 1.0
    {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            PENALTY_LAST_N,
            penalty,
            0.0,
            0.0,
        ));
    }
    let temperature = s.temperature.unwrap_or(0.8);
    if temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
        return LlamaSampler::chain_simple(chain);
    }
    let top_k = s.top_k.unwrap_or(40);
    if top_k > 0 {
        chain.push(LlamaSampler::top_k(top_k.min(i32::MAX as u32) as i32));
    }
    chain.push(LlamaSampler::top_p(s.top_p.unwrap_or(1.0), 1));
    chain.push(LlamaSampler::temp(temperature));
    let seed = s.seed.unwrap_or_else(random_seed);
    chain.push(LlamaSampler::dist((seed ^ (seed >> 32)) as u32));
    LlamaSampler::chain_simple(chain)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
