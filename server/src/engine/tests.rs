//! Engine tests against a fake model that really pages: it stores each token in the KV slot the batch names and
//! computes the next token from the context it reads back through the block table. Wrong slot mapping, block
//! tables, preemption or batching changes the output.

use std::time::{Duration, Instant};

use super::*;
use crate::api::validate::Endpoint;
use crate::block_manager::BlockManager;
use crate::scheduler::SchedulerConfig;

const VOCAB: usize = 64;

/// The token a context leads to (never STOP unless the context sums so).
fn next_token(ctx: &[u32]) -> u32 {
    let h = ctx.iter().enumerate().fold(7u64, |h, (i, &t)| {
        h.wrapping_mul(31).wrapping_add((i as u64 + 1) * t as u64)
    });
    (h % VOCAB as u64) as u32
}

fn reference(prompt: &[u32], max_tokens: usize, stop: &[u32]) -> Vec<u32> {
    let mut ctx = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < max_tokens {
        let t = next_token(&ctx);
        ctx.push(t);
        out.push(t);
        if stop.contains(&t) {
            break;
        }
    }
    out
}

struct PagedFake {
    slots: Vec<u32>,
    block_size: usize,
    delay: Duration,
}

impl StepModel for PagedFake {
    fn step(&mut self, batch: &BatchInput) -> candle_core::Result<Vec<Vec<f32>>> {
        std::thread::sleep(self.delay);
        let bs = self.block_size;
        let mut rows = Vec::new();
        for s in &batch.seqs {
            for i in s.start..s.start + s.len {
                let slot = batch.slot_mapping[i] as usize;
                if slot >= self.slots.len() {
                    candle_core::bail!("slot {slot} out of range");
                }
                self.slots[slot] = batch.token_ids[i];
            }
            if s.wants_logits {
                let ctx: Vec<u32> = (0..s.context_len)
                    .map(|p| self.slots[s.block_table[p / bs] as usize * bs + p % bs])
                    .collect();
                let mut row = vec![0.0f32; VOCAB];
                row[next_token(&ctx) as usize] = 10.0;
                rows.push(row);
            }
        }
        Ok(rows)
    }
}

struct Setup {
    num_blocks: usize,
    block_size: usize,
    budget: usize,
    max_batch: usize,
    max_queue: usize,
    delay: Duration,
    prefix_caching: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            num_blocks: 64,
            block_size: 4,
            budget: 32,
            max_batch: 16,
            max_queue: 100,
            delay: Duration::ZERO,
            prefix_caching: true,
        }
    }
}

fn start(s: Setup) -> (EngineHandle, Metrics, JoinHandle<()>) {
    let config = SchedulerConfig {
        max_num_batched_tokens: s.budget,
        max_batch_size: s.max_batch,
        max_seq_len: 128,
    };
    let (num_blocks, block_size, prefix) = (s.num_blocks, s.block_size, s.prefix_caching);
    let scheduler =
        move || Scheduler::new(config, BlockManager::new(num_blocks, block_size, prefix));
    let model = PagedFake {
        slots: vec![u32::MAX; s.num_blocks * s.block_size],
        block_size: s.block_size,
        delay: s.delay,
    };
    let metrics = Metrics::new("fake").unwrap();
    let (h, j) = Engine::spawn(
        model,
        scheduler,
        metrics.clone(),
        EngineConfig {
            max_queue: s.max_queue,
        },
    )
    .unwrap();
    (h, metrics, j)
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> ValidRequest {
    ValidRequest {
        endpoint: Endpoint::Completions,
        model: "fake".into(),
        prompt_tokens: prompt,
        max_tokens,
        n: 1,
        sampling: Sampling::greedy(),
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        stream: false,
        include_usage: false,
        logprobs: None,
        guide: None,
        tools: None,
    }
}

/// Collects (per choice) tokens and finish reasons until every choice finished.
fn collect(mut rx: UnboundedReceiver<Event>, n: usize) -> Vec<(Vec<u32>, Option<FinishReason>)> {
    let mut out = vec![(Vec::new(), None); n];
    let mut done = 0;
    while done < n {
        match rx.blocking_recv() {
            Some(Event::Token {
                index,
                sampled,
                finish,
            }) => {
                out[index].0.push(sampled.token);
                if finish.is_some() {
                    out[index].1 = finish;
                    done += 1;
                }
            }
            Some(Event::Failed(e)) => panic!("failed: {e}"),
            None => panic!("channel closed early"),
        }
    }
    out
}

fn prompt(i: usize) -> Vec<u32> {
    (0..3 + (i * 5) % 17)
        .map(|k| ((i * 13 + k * 7) % (VOCAB - 1) + 1) as u32)
        .collect()
}

fn wait_idle(h: &EngineHandle) {
    let t = Instant::now();
    while h.in_flight() > 0 || h.queue_len() > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "engine did not go idle"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(20));
}

#[test]
fn greedy_output_equals_the_reference_computation() {
    let (h, _, _) = start(Setup::default());
    let (_, rx) = h.submit(request(prompt(1), 12)).unwrap();
    let got = collect(rx, 1);
    assert_eq!(got[0].0, reference(&prompt(1), 12, &[]));
    assert_eq!(got[0].1, Some(FinishReason::Length));
}

#[test]
fn concurrent_requests_get_exactly_what_each_gets_alone_even_with_preemption() {
    for (num_blocks, budget) in [(64, 32), (10, 8), (10, 3)] {
        let (h, metrics, _) = start(Setup {
            num_blocks,
            budget,
            ..Setup::default()
        });
        let rxs: Vec<_> = (0..16)
            .map(|i| h.submit(request(prompt(i), 4 + i % 9)).unwrap().1)
            .collect();
        for (i, rx) in rxs.into_iter().enumerate() {
            assert_eq!(
                collect(rx, 1)[0].0,
                reference(&prompt(i), 4 + i % 9, &[]),
                "request {i}, {num_blocks} blocks"
            );
        }
        wait_idle(&h);
        if num_blocks == 10 {
            assert!(
                metrics.preemptions.get() > 0,
                "the tiny cache forces preemption"
            );
        }
        assert_eq!(metrics.kv_blocks_used.get(), 0);
    }
}

#[test]
fn a_stop_token_ends_the_choice_with_stop() {
    let p = prompt(3);
    let full = reference(&p, 20, &[]);
    let stop = full[4];
    let (h, _, _) = start(Setup::default());
    let mut req = request(p.clone(), 20);
    req.stop_token_ids = vec![stop];
    let got = collect(h.submit(req).unwrap().1, 1);
    assert_eq!(got[0].0, reference(&p, 20, &[stop]));
    assert_eq!(got[0].1, Some(FinishReason::Stop));
}

#[test]
fn n_choices_arrive_with_their_index() {
    let (h, _, _) = start(Setup::default());
    let mut req = request(prompt(2), 5);
    req.n = 3;
    let got = collect(h.submit(req).unwrap().1, 3);
    for (tokens, finish) in got {
        assert_eq!(tokens, reference(&prompt(2), 5, &[]));
        assert_eq!(finish, Some(FinishReason::Length));
    }
}

#[test]
fn a_dropped_receiver_aborts_the_request_and_frees_its_blocks() {
    let (h, metrics, _) = start(Setup {
        delay: Duration::from_millis(5),
        ..Setup::default()
    });
    let (_, mut rx) = h.submit(request(prompt(5), 100)).unwrap();
    assert!(matches!(rx.blocking_recv(), Some(Event::Token { .. })));
    drop(rx);
    wait_idle(&h);
    assert_eq!(
        metrics.request_success.with_label_values(&["abort"]).get(),
        1
    );
    assert_eq!(metrics.kv_blocks_used.get(), 0);
    assert!(metrics.generation_tokens.get() < 100);
}

#[test]
fn an_explicit_abort_with_a_reason_is_counted_under_that_reason() {
    let (h, metrics, _) = start(Setup {
        delay: Duration::from_millis(5),
        ..Setup::default()
    });
    let (id, mut rx) = h.submit(request(prompt(5), 100)).unwrap();
    assert!(matches!(rx.blocking_recv(), Some(Event::Token { .. })));
    h.abort(id, FinishReason::Stop);
    wait_idle(&h);
    assert_eq!(
        metrics.request_success.with_label_values(&["stop"]).get(),
        1
    );
    assert_eq!(metrics.kv_blocks_used.get(), 0);
}

#[test]
fn submissions_beyond_the_queue_bound_are_refused_with_a_retry_hint() {
    let (h, _, _) = start(Setup {
        max_batch: 1,
        max_queue: 2,
        delay: Duration::from_millis(20),
        ..Setup::default()
    });
    let mut refused = None;
    let mut accepted = Vec::new();
    for i in 0..10 {
        match h.submit(request(prompt(i), 5)) {
            Ok((_, rx)) => accepted.push(rx),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    match refused {
        Some(SubmitError::QueueFull {
            queued,
            retry_after_s,
        }) => {
            assert!(queued >= 2);
            assert!(retry_after_s >= 1);
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    for rx in accepted {
        collect(rx, 1);
    }
}

#[test]
fn a_draining_engine_refuses_new_requests_but_finishes_old_ones() {
    let (h, _, _) = start(Setup {
        delay: Duration::from_millis(2),
        ..Setup::default()
    });
    let (_, rx) = h.submit(request(prompt(1), 10)).unwrap();
    h.start_draining();
    assert_eq!(
        h.submit(request(prompt(2), 1)).err(),
        Some(SubmitError::Draining)
    );
    assert_eq!(collect(rx, 1)[0].0.len(), 10);
}

#[test]
fn a_failing_model_step_fails_the_request_instead_of_hanging() {
    struct Broken;
    impl StepModel for Broken {
        fn step(&mut self, _: &BatchInput) -> candle_core::Result<Vec<Vec<f32>>> {
            candle_core::bail!("boom")
        }
    }
    let config = SchedulerConfig {
        max_num_batched_tokens: 16,
        max_batch_size: 4,
        max_seq_len: 64,
    };
    let scheduler = move || Scheduler::new(config, BlockManager::new(8, 4, false));
    let metrics = Metrics::new("x").unwrap();
    let (h, _) = Engine::spawn(
        Broken,
        scheduler,
        metrics.clone(),
        EngineConfig { max_queue: 4 },
    )
    .unwrap();
    let (_, mut rx) = h.submit(request(vec![1, 2], 3)).unwrap();
    assert!(matches!(rx.blocking_recv(), Some(Event::Failed(_))));
    wait_idle(&h);
    assert_eq!(metrics.kv_blocks_used.get(), 0);
}

#[test]
fn aborting_one_choice_leaves_the_others_running() {
    let (h, metrics, _) = start(Setup {
        delay: Duration::from_millis(2),
        ..Setup::default()
    });
    let mut req = request(prompt(4), 8);
    req.n = 2;
    let (id, mut rx) = h.submit(req).unwrap();
    h.abort_choice(id, 0, FinishReason::Stop);
    let mut last_of_1 = None;
    while let Some(ev) = rx.blocking_recv() {
        if let Event::Token {
            index: 1,
            finish: Some(f),
            ..
        } = ev
        {
            last_of_1 = Some(f);
            break;
        }
    }
    assert_eq!(last_of_1, Some(FinishReason::Length));
    wait_idle(&h);
    assert_eq!(metrics.kv_blocks_used.get(), 0);
}
