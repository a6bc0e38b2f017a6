use super::*;

fn sched(num_blocks: usize, block_size: usize, budget: usize, max_batch: usize) -> Scheduler {
    // As `serve` does: a lone sequence always fits in the pool.
    let max_seq_len = (num_blocks * block_size).min(64);
    let config = SchedulerConfig {
        max_num_batched_tokens: budget,
        max_batch_size: max_batch,
        max_seq_len,
    };
    Scheduler::new(config, BlockManager::new(num_blocks, block_size, false))
}

fn req(id: RequestId, prompt_len: usize, max_tokens: usize) -> SeqRequest {
    SeqRequest {
        id,
        prompt: (0..prompt_len as u32).map(|t| t + 10 * id as u32).collect(),
        max_tokens,
        stop_token_ids: vec![2],
    }
}

fn grants(out: &SchedulerOutput) -> Vec<(RequestId, usize)> {
    out.scheduled
        .iter()
        .map(|s| (s.id, s.num_new_tokens))
        .collect()
}

/// Runs one step feeding token 5 to every sampling sequence.
fn step(s: &mut Scheduler) -> SchedulerOutput {
    let out = s.schedule();
    let n = out.sampling_ids().count();
    s.update(&out, &vec![5; n]);
    out
}

#[test]
fn a_short_prompt_is_prefilled_in_one_step_then_decodes_one_token_per_step() {
    let mut s = sched(8, 4, 16, 4);
    s.add(req(1, 6, 3)).unwrap();
    let out = step(&mut s);
    assert_eq!(grants(&out), vec![(1, 6)]);
    assert_eq!(out.batch.positions, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(out.batch.slot_mapping, vec![0, 1, 2, 3, 4, 5]);
    assert!(out.batch.seqs[0].wants_logits);
    let out = step(&mut s);
    assert_eq!(grants(&out), vec![(1, 1)]);
    assert_eq!(out.batch.token_ids, vec![5]);
    assert_eq!(out.batch.positions, vec![6]);
    assert_eq!(out.batch.seqs[0].context_len, 7);
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_within_the_token_budget() {
    let mut s = sched(8, 4, 5, 4);
    s.add(req(1, 12, 2)).unwrap();
    let a = step(&mut s);
    assert_eq!(grants(&a), vec![(1, 5)]);
    assert!(
        !a.scheduled[0].samples,
        "no token is sampled from a non-final chunk"
    );
    let b = step(&mut s);
    assert_eq!(grants(&b), vec![(1, 5)]);
    assert_eq!(b.batch.positions[0], 5);
    let c = step(&mut s);
    assert_eq!(grants(&c), vec![(1, 2)]);
    assert!(c.scheduled[0].samples);
    assert_eq!(s.output_tokens(1), Some(&[5][..]));
}

#[test]
fn decodes_come_first_and_the_rest_of_the_budget_admits_waiting_prompts() {
    let mut s = sched(16, 4, 8, 4);
    s.add(req(1, 4, 10)).unwrap();
    step(&mut s);
    s.add(req(2, 20, 10)).unwrap();
    let out = step(&mut s);
    assert_eq!(grants(&out), vec![(1, 1), (2, 7)]);
    assert_eq!(out.batch.seqs[1].start, 1);
    assert_eq!(out.batch.seqs[1].block_table.len(), 2);
}

#[test]
fn no_more_than_max_batch_size_sequences_run_at_once() {
    let mut s = sched(16, 4, 100, 2);
    for id in 1..=3 {
        s.add(req(id, 3, 5)).unwrap();
    }
    let out = step(&mut s);
    assert_eq!(grants(&out), vec![(1, 3), (2, 3)]);
    assert_eq!(s.num_waiting(), 1);
}

#[test]
fn a_waiting_request_stays_queued_when_its_blocks_do_not_fit() {
    let mut s = sched(3, 4, 100, 8);
    s.add(req(1, 8, 4)).unwrap();
    s.add(req(2, 8, 4)).unwrap();
    let out = step(&mut s);
    assert_eq!(grants(&out), vec![(1, 8)]);
    assert_eq!(s.num_waiting(), 1);
    assert_eq!(s.blocks().num_used(), 2);
}

#[test]
fn running_request_is_preempted_when_blocks_run_out_newest_first() {
    // 4 blocks of 2: two sequences of 3 prompt tokens use 2 blocks each; the first decode that needs a
    // third block for sequence 1 evicts sequence 2 (the newest).
    let mut s = sched(4, 2, 100, 8);
    s.add(req(1, 3, 10)).unwrap();
    s.add(req(2, 3, 10)).unwrap();
    let out = step(&mut s);
    assert_eq!(grants(&out), vec![(1, 3), (2, 3)]);
    let out = step(&mut s); // positions 3: both still fit in their second block
    assert_eq!(grants(&out), vec![(1, 1), (2, 1)]);
    let out = step(&mut s); // position 4 needs a third block each
    assert_eq!(out.preempted, vec![2]);
    assert_eq!(grants(&out), vec![(1, 1)]);
    assert_eq!(s.num_waiting(), 1);
    assert_eq!(s.num_preemptions(), 1);
    // The preempted request keeps its output and is recomputed from scratch when it is readmitted.
    assert_eq!(s.output_tokens(2), Some(&[5, 5][..]));
}

#[test]
fn a_preempted_request_is_recomputed_with_its_output_once_blocks_free_up() {
    let mut s = sched(4, 2, 100, 8);
    s.add(req(1, 3, 10)).unwrap();
    s.add(req(2, 3, 10)).unwrap();
    step(&mut s);
    step(&mut s);
    let out = step(&mut s);
    assert_eq!(out.preempted, vec![2]);
    s.abort(1);
    let out = step(&mut s);
    assert_eq!(
        grants(&out),
        vec![(2, 5)],
        "prompt 3 + 2 outputs recomputed"
    );
    assert_eq!(out.batch.positions, vec![0, 1, 2, 3, 4]);
    assert!(out.scheduled[0].samples);
}

#[test]
fn the_newest_request_preempts_itself_when_it_cannot_grow() {
    let mut s = sched(3, 2, 100, 8);
    s.add(req(1, 3, 10)).unwrap();
    s.add(req(2, 2, 10)).unwrap();
    step(&mut s); // 1 holds 2 blocks, 2 holds 1 block; both sampled a token
    let out = step(&mut s); // 2 needs a second block: none free, and it is the newest
    assert_eq!(out.preempted, vec![2]);
    assert_eq!(grants(&out), vec![(1, 1)]);
    assert_eq!(s.blocks().num_used(), 2);
}

#[test]
fn waiting_requests_are_not_admitted_in_a_step_that_preempted() {
    let mut s = sched(4, 2, 100, 8);
    s.add(req(1, 3, 10)).unwrap();
    s.add(req(2, 3, 10)).unwrap();
    step(&mut s);
    step(&mut s);
    s.add(req(3, 1, 1)).unwrap();
    let out = step(&mut s);
    assert_eq!(out.preempted, vec![2]);
    assert!(out.scheduled.iter().all(|g| g.id == 1));
}

#[test]
fn a_stop_token_finishes_the_sequence_and_frees_its_blocks() {
    let mut s = sched(8, 4, 16, 4);
    s.add(req(1, 5, 10)).unwrap();
    let out = s.schedule();
    let ups = s.update(&out, &[2]);
    assert_eq!(
        ups,
        vec![SeqUpdate {
            id: 1,
            token: 2,
            finish: Some(FinishReason::Stop)
        }]
    );
    assert_eq!(s.num_running(), 0);
    assert_eq!(s.blocks().num_used(), 0);
}

#[test]
fn max_tokens_and_max_seq_len_finish_with_length() {
    let mut s = sched(32, 4, 100, 4);
    s.add(req(1, 4, 2)).unwrap();
    assert_eq!(step(&mut s).scheduled.len(), 1);
    let out = s.schedule();
    assert_eq!(s.update(&out, &[7])[0].finish, Some(FinishReason::Length));
    // max_seq_len 64: a 62-token prompt can only produce 2 tokens whatever max_tokens says.
    s.add(req(2, 62, 100)).unwrap();
    let out = s.schedule();
    assert_eq!(s.update(&out, &[7])[0].finish, None);
    let out = s.schedule();
    assert_eq!(s.update(&out, &[7])[0].finish, Some(FinishReason::Length));
    assert_eq!(s.blocks().num_used(), 0);
}

#[test]
fn waste_is_the_unused_tail_of_each_last_block() {
    let mut s = sched(16, 4, 100, 4);
    s.add(req(1, 5, 10)).unwrap(); // 2 blocks = 8 slots for 5 (+1 sampled) tokens
    s.add(req(2, 8, 10)).unwrap(); // 2 blocks = 8 slots for 8 (+1 sampled) tokens
    step(&mut s);
    // After the step each holds prompt + 1 sampled token: 6 of 8 and 8 of 8 (9th not yet allocated).
    assert_eq!(s.kv_slot_usage(), (16, 14));
}

#[test]
fn requests_that_could_never_run_are_rejected_up_front() {
    let config = SchedulerConfig {
        max_num_batched_tokens: 100,
        max_batch_size: 4,
        max_seq_len: 64,
    };
    let mut s = Scheduler::new(config, BlockManager::new(4, 4, false));
    assert_eq!(s.add(req(1, 0, 1)), Err(AddError::EmptyPrompt));
    assert_eq!(
        s.add(req(1, 64, 1)),
        Err(AddError::PromptTooLong {
            prompt: 64,
            max_seq_len: 64
        })
    );
    assert_eq!(
        s.add(req(1, 10, 10)),
        Err(AddError::TooLargeForCache {
            needed: 5,
            total: 4
        })
    );
    s.add(req(1, 10, 6)).unwrap();
    assert_eq!(s.add(req(1, 1, 1)), Err(AddError::DuplicateId(1)));
}

#[test]
fn aborting_a_running_request_frees_its_blocks_at_once() {
    let mut s = sched(8, 4, 16, 4);
    s.add(req(1, 9, 10)).unwrap();
    s.add(req(2, 3, 10)).unwrap();
    step(&mut s);
    assert_eq!(s.blocks().num_used(), 4);
    assert!(s.abort(1));
    assert_eq!(s.blocks().num_used(), 1);
    assert!(s.abort(2));
    assert!(!s.abort(2));
    assert_eq!(s.blocks().num_used(), 0);
    assert!(!s.has_work());
}

#[test]
fn a_second_request_with_the_same_prompt_skips_the_cached_prefix() {
    let config = SchedulerConfig {
        max_num_batched_tokens: 100,
        max_batch_size: 4,
        max_seq_len: 64,
    };
    let mut s = Scheduler::new(config, BlockManager::new(16, 4, true));
    s.add(req(1, 10, 1)).unwrap();
    step(&mut s);
    s.add(req(2, 10, 1)).unwrap();
    s.abort(2);
    s.add(SeqRequest {
        id: 3,
        ..req(1, 10, 1)
    })
    .unwrap();
    let out = step(&mut s);
    assert_eq!(grants(&out), vec![(3, 2)]);
    assert_eq!(out.batch.positions, vec![8, 9]);
    let st = s.blocks().stats();
    assert_eq!((st.prefix_query_tokens, st.prefix_hit_tokens), (20, 8));
}

#[test]
fn random_workloads_finish_every_request_and_leave_the_pool_empty() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    for seed in 0..10u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let config = SchedulerConfig {
            max_num_batched_tokens: 16,
            max_batch_size: 4,
            max_seq_len: 40,
        };
        let mut s = Scheduler::new(config, BlockManager::new(12, 4, seed % 2 == 0));
        let mut next_id = 0;
        let mut finished = 0;
        for _ in 0..2000 {
            if next_id < 50 && rng.random_bool(0.3) {
                let len = rng.random_range(1..30);
                let prompt = (0..len).map(|_| rng.random_range(3..6)).collect();
                let max_tokens = rng.random_range(1..10);
                s.add(SeqRequest {
                    id: next_id,
                    prompt,
                    max_tokens,
                    stop_token_ids: vec![2],
                })
                .unwrap();
                next_id += 1;
            }
            let out = s.schedule();
            assert!(out.num_batched_tokens() <= 16);
            assert!(out.scheduled.len() <= 4);
            let sampled: Vec<u32> = out.sampling_ids().map(|_| rng.random_range(2..6)).collect();
            finished += s
                .update(&out, &sampled)
                .iter()
                .filter(|u| u.finish.is_some())
                .count();
            let used = s.blocks().num_used();
            assert!(used <= 12);
            if !s.has_work() {
                assert_eq!(used, 0);
            }
        }
        assert_eq!(finished, next_id as usize, "seed {seed}");
    }
}
