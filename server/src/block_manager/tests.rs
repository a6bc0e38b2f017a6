use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn toks(n: usize, base: u32) -> Vec<u32> {
    (0..n as u32).map(|i| base + i).collect()
}

#[test]
fn allocation_covers_tokens_in_whole_blocks_and_maps_slots() {
    let mut bm = BlockManager::new(8, 4, false);
    let (mut t, cached) = bm.start_sequence(&toks(6, 0));
    assert_eq!(cached, 0);
    bm.allocate(&mut t, 6).unwrap();
    assert_eq!(t.ids(), vec![0, 1]);
    assert_eq!(t.slot(0, 4), Some(0));
    assert_eq!(t.slot(5, 4), Some(5));
    assert_eq!(t.slot(8, 4), None);
    bm.allocate(&mut t, 8).unwrap();
    assert_eq!(t.len(), 2, "8 tokens still fit in two blocks");
    bm.allocate(&mut t, 9).unwrap();
    assert_eq!(t.ids(), vec![0, 1, 2]);
    assert_eq!(bm.num_used(), 3);
}

#[test]
fn allocation_returns_none_and_changes_nothing_when_the_pool_is_short() {
    let mut bm = BlockManager::new(3, 4, false);
    let mut a = BlockTable::default();
    bm.allocate(&mut a, 8).unwrap();
    let mut b = BlockTable::default();
    assert_eq!(bm.allocate(&mut b, 8), None);
    assert!(b.is_empty());
    assert_eq!(bm.num_free(), 1);
    bm.allocate(&mut b, 4).unwrap();
    assert_eq!(bm.num_free(), 0);
}

#[test]
fn dropping_a_table_returns_its_blocks_to_the_pool() {
    let mut bm = BlockManager::new(4, 2, false);
    let mut t = BlockTable::default();
    bm.allocate(&mut t, 7).unwrap();
    assert_eq!(bm.num_free(), 0);
    drop(t);
    assert_eq!(bm.num_free(), 4);
}

#[test]
fn forked_blocks_are_freed_only_when_the_last_owner_drops() {
    let mut bm = BlockManager::new(4, 2, false);
    let mut t = BlockTable::default();
    bm.allocate(&mut t, 4).unwrap();
    let f = t.fork();
    assert_eq!(bm.ref_count(0), 2);
    drop(t);
    assert_eq!(bm.num_used(), 2);
    drop(f);
    assert_eq!(bm.num_used(), 0);
}

#[test]
fn a_second_sequence_reuses_committed_full_blocks_of_a_shared_prefix() {
    let mut bm = BlockManager::new(8, 4, true);
    let prompt = toks(10, 100);
    let (mut a, cached) = bm.start_sequence(&prompt);
    assert_eq!(cached, 0);
    bm.allocate(&mut a, 10).unwrap();
    bm.commit(&mut a, &prompt, 10);
    let mut other = prompt.clone();
    other[9] = 7; // same first two blocks, different tail
    let (b, cached) = bm.start_sequence(&other);
    assert_eq!(cached, 8);
    assert_eq!(b.ids()[..2], a.ids()[..2]);
    bm.record_prefix_lookup(10, cached);
    let s = bm.stats();
    assert_eq!((s.prefix_query_tokens, s.prefix_hit_tokens), (10, 8));
}

#[test]
fn uncomputed_blocks_are_never_served_from_the_prefix_cache() {
    let mut bm = BlockManager::new(8, 4, true);
    let prompt = toks(12, 0);
    let (mut a, _) = bm.start_sequence(&prompt);
    bm.allocate(&mut a, 12).unwrap();
    bm.commit(&mut a, &prompt, 5); // only the first block's K/V exists
    let (_, cached) = bm.start_sequence(&prompt);
    assert_eq!(cached, 4);
}

#[test]
fn a_fully_cached_prompt_still_leaves_its_last_token_to_compute() {
    let mut bm = BlockManager::new(8, 4, true);
    let prompt = toks(8, 0);
    let (mut a, _) = bm.start_sequence(&prompt);
    bm.allocate(&mut a, 8).unwrap();
    bm.commit(&mut a, &prompt, 8);
    let (b, cached) = bm.start_sequence(&prompt);
    assert_eq!(cached, 4);
    assert_eq!(b.len(), 1);
}

#[test]
fn a_prefix_differing_in_an_earlier_block_does_not_hit_later_blocks() {
    let mut bm = BlockManager::new(8, 2, true);
    let prompt = vec![1, 2, 3, 4, 5];
    let (mut a, _) = bm.start_sequence(&prompt);
    bm.allocate(&mut a, 5).unwrap();
    bm.commit(&mut a, &prompt, 5);
    let (_, cached) = bm.start_sequence(&[9, 9, 3, 4, 5]);
    assert_eq!(cached, 0, "the second block's hash is chained on the first");
}

#[test]
fn freed_cached_blocks_survive_until_evicted_least_recently_used_first() {
    let mut bm = BlockManager::new(3, 2, true);
    let (p1, p2) = (vec![1, 1, 9], vec![2, 2, 9]);
    for p in [&p1, &p2] {
        let (mut t, _) = bm.start_sequence(p);
        bm.allocate(&mut t, 3).unwrap();
        bm.commit(&mut t, p, 3);
    } // both dropped: p1's block freed first, then p2's
    assert_eq!(bm.num_used(), 0);
    // Two allocations: the plain free block goes first, then the LRU cached block (p1's) is evicted.
    let mut t = BlockTable::default();
    bm.allocate(&mut t, 4).unwrap();
    assert_eq!(bm.start_sequence(&p1).1, 0, "p1 was evicted");
    assert_eq!(bm.start_sequence(&p2).1, 2, "p2 is still cached");
}

#[test]
fn a_hit_on_a_free_cached_block_takes_it_out_of_the_free_list() {
    let mut bm = BlockManager::new(2, 2, true);
    let p = vec![4, 4, 5];
    {
        let (mut t, _) = bm.start_sequence(&p);
        bm.allocate(&mut t, 3).unwrap();
        bm.commit(&mut t, &p, 3);
    }
    let (mut hit, cached) = bm.start_sequence(&p);
    assert_eq!(cached, 2);
    assert_eq!(bm.num_free(), 1);
    bm.allocate(&mut hit, 3).unwrap();
    let mut other = BlockTable::default();
    assert_eq!(bm.allocate(&mut other, 1), None);
}

#[test]
fn reset_turns_cached_free_blocks_into_plain_ones() {
    let mut bm = BlockManager::new(2, 2, true);
    let p = vec![4, 4, 5];
    {
        let (mut t, _) = bm.start_sequence(&p);
        bm.allocate(&mut t, 3).unwrap();
        bm.commit(&mut t, &p, 3);
    }
    bm.reset_prefix_cache();
    assert_eq!(bm.start_sequence(&p).1, 0);
    assert_eq!(bm.num_free(), 2);
}

/// Seeded property test: random allocate / grow / commit / fork / free rounds never hand one block to two
/// unrelated owners, and free + used always equals total.
#[test]
fn random_allocate_free_fork_rounds_keep_the_pool_consistent() {
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut bm = BlockManager::new(32, 4, seed % 2 == 0);
        // (tokens, table); forks share a lineage id so shared blocks are expected within a lineage.
        let mut live: Vec<(usize, Vec<u32>, BlockTable)> = Vec::new();
        for round in 0..400 {
            match rng.random_range(0..10) {
                0..=3 => {
                    let n = rng.random_range(1..20);
                    let tokens: Vec<u32> = (0..n).map(|_| rng.random_range(0..4)).collect();
                    let (mut t, cached) = bm.start_sequence(&tokens);
                    assert!(cached < tokens.len());
                    if bm.allocate(&mut t, tokens.len()).is_some() {
                        bm.commit(&mut t, &tokens, tokens.len());
                        live.push((round, tokens, t));
                    }
                }
                4..=5 if !live.is_empty() => {
                    let i = rng.random_range(0..live.len());
                    let (_, tokens, t) = &mut live[i];
                    let grow = rng.random_range(1..6);
                    let new_len = tokens.len() + grow;
                    if bm.allocate(t, new_len).is_some() {
                        tokens.extend((0..grow).map(|_| rng.random_range(0..4)));
                        bm.commit(t, tokens, tokens.len());
                    }
                }
                6 if !live.is_empty() => {
                    let i = rng.random_range(0..live.len());
                    let (lineage, tokens, t) = &live[i];
                    let f = t.fork();
                    live.push((*lineage, tokens.clone(), f));
                }
                _ if !live.is_empty() => {
                    let i = rng.random_range(0..live.len());
                    live.swap_remove(i);
                }
                _ => {}
            }
            // Invariants.
            let mut refs = vec![0u32; bm.num_blocks()];
            for (_, tokens, t) in &live {
                assert!(t.len() * 4 >= tokens.len());
                for id in t.ids() {
                    refs[id as usize] += 1;
                }
            }
            let used = refs.iter().filter(|&&r| r > 0).count();
            assert_eq!(used, bm.num_used(), "seed {seed} round {round}");
            assert_eq!(bm.num_free() + bm.num_used(), bm.num_blocks());
            for (id, &r) in refs.iter().enumerate() {
                assert_eq!(
                    r,
                    bm.ref_count(id as BlockId),
                    "seed {seed} round {round} block {id}"
                );
            }
            let p = bm.pool.borrow();
            let mut free_ids: Vec<BlockId> = p
                .free_plain
                .iter()
                .chain(p.free_cached.values())
                .copied()
                .collect();
            free_ids.sort_unstable();
            let before = free_ids.len();
            free_ids.dedup();
            assert_eq!(before, free_ids.len(), "a block is free twice");
            assert!(
                free_ids.iter().all(|&id| refs[id as usize] == 0),
                "a free block is owned"
            );
            drop(p);
            // Unrelated owners never share a block unless it is a committed prefix-cache block.
            let mut owner: HashMap<BlockId, usize> = HashMap::new();
            for (lineage, _, t) in &live {
                for (j, id) in t.ids().into_iter().enumerate() {
                    if let Some(&other) = owner.get(&id) {
                        let shared_ok = other == *lineage || j < t.hashes.len();
                        assert!(shared_ok, "seed {seed}: block {id} owned twice");
                    }
                    owner.insert(id, *lineage);
                }
            }
        }
        live.clear();
        assert_eq!(bm.num_used(), 0);
    }
}
