//! The KV block manager: a pool of fixed-size blocks, per-sequence block tables, slot mapping and prefix caching.
//!
//! Pure bookkeeping over block ids — no tensors. The KV cache tensors are indexed by the ids handed out here.
//!
//! - Blocks are reference counted. A [`BlockTable`] owns its references; dropping the table (or a block
//!   reference) returns the blocks to the pool, so a finished, aborted or preempted sequence frees itself.
//! - Allocation returns `None` when the pool cannot satisfy it (all-or-nothing): running out is an answer.
//! - Prefix caching: once a block is full *and its K/V has been computed*, it is registered under a chained hash
//!   (parent block's hash + this block's tokens). A later sequence with the same prefix reuses it. Free blocks
//!   that still hold a cached prefix stay reusable until they are evicted, least recently used first; free blocks
//!   holding nothing are handed out before any cached block is evicted.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;

/// A physical block index into the KV cache.
pub type BlockId = u32;

/// The identity of a cached full block: its parent's hash and its own tokens (compared on lookup, so a 64-bit
/// hash collision can never hand out the wrong K/V).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockKey {
    parent: u64,
    tokens: Vec<u32>,
}

/// Hash of a full block, chained over its parent's hash (deterministic across runs).
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// The hash chain starts from this value (the "parent" of a sequence's first block).
pub const ROOT_HASH: u64 = 0x6c6c_616d_615f_6f70;

#[derive(Debug)]
struct Pool {
    ref_counts: Vec<u32>,
    /// Free blocks that hold no cached prefix (a stack).
    free_plain: Vec<BlockId>,
    /// Free blocks that still hold a cached prefix, keyed by the time they were freed (oldest first = LRU).
    free_cached: BTreeMap<u64, BlockId>,
    /// For each block in `free_cached`, its key in that map.
    free_stamp: Vec<Option<u64>>,
    clock: u64,
    /// Cached prefix of each block (if registered), and the reverse index.
    key_of: Vec<Option<(u64, BlockKey)>>,
    by_hash: HashMap<u64, BlockId>,
    prefix_queries: u64,
    prefix_hits: u64,
}

impl Pool {
    fn num_free(&self) -> usize {
        self.free_plain.len() + self.free_cached.len()
    }

    /// Takes one free block, evicting the least recently used cached prefix if no plain block is left.
    fn take_free(&mut self) -> Option<BlockId> {
        let id = match self.free_plain.pop() {
            Some(id) => id,
            None => {
                let (_, id) = self.free_cached.pop_first()?;
                self.free_stamp[id as usize] = None;
                if let Some((hash, _)) = self.key_of[id as usize].take() {
                    self.by_hash.remove(&hash);
                }
                id
            }
        };
        self.ref_counts[id as usize] = 1;
        Some(id)
    }

    /// Adds a reference to `id`, taking it out of the free lists if it was free (a prefix-cache hit).
    fn acquire(&mut self, id: BlockId) {
        let i = id as usize;
        if self.ref_counts[i] == 0
            && let Some(stamp) = self.free_stamp[i].take()
        {
            self.free_cached.remove(&stamp);
        }
        self.ref_counts[i] += 1;
    }

    fn release(&mut self, id: BlockId) {
        let i = id as usize;
        debug_assert!(self.ref_counts[i] > 0, "block {id} released twice");
        self.ref_counts[i] = self.ref_counts[i].saturating_sub(1);
        if self.ref_counts[i] == 0 {
            if self.key_of[i].is_some() {
                self.clock += 1;
                self.free_cached.insert(self.clock, id);
                self.free_stamp[i] = Some(self.clock);
            } else {
                self.free_plain.push(id);
            }
        }
    }
}

/// One counted reference to a block; the block returns to the pool when the last reference drops.
#[derive(Debug)]
pub struct BlockRef {
    id: BlockId,
    pool: Rc<RefCell<Pool>>,
}

impl BlockRef {
    pub fn id(&self) -> BlockId {
        self.id
    }
}

impl Clone for BlockRef {
    fn clone(&self) -> Self {
        self.pool.borrow_mut().acquire(self.id);
        Self {
            id: self.id,
            pool: Rc::clone(&self.pool),
        }
    }
}

impl Drop for BlockRef {
    fn drop(&mut self) {
        self.pool.borrow_mut().release(self.id);
    }
}

/// A sequence's blocks in logical order, plus the hashes of its leading blocks registered in the prefix cache.
#[derive(Debug, Default)]
pub struct BlockTable {
    blocks: Vec<BlockRef>,
    /// Chained hashes of `blocks[..hashes.len()]`, all full and computed.
    hashes: Vec<u64>,
}

impl BlockTable {
    pub fn ids(&self) -> Vec<BlockId> {
        self.blocks.iter().map(BlockRef::id).collect()
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Physical slot of logical token position `pos` (`block_id * block_size + offset`).
    pub fn slot(&self, pos: usize, block_size: usize) -> Option<u32> {
        let block = self.blocks.get(pos / block_size)?;
        Some(block.id * block_size as u32 + (pos % block_size) as u32)
    }

    /// A second table sharing every block of this one (copy-on-write is the caller's business: only append
    /// into blocks that are not shared).
    pub fn fork(&self) -> Self {
        Self {
            blocks: self.blocks.clone(),
            hashes: self.hashes.clone(),
        }
    }
}

/// Counters and sizes for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockUsage {
    pub total: usize,
    pub used: usize,
    /// Prefix-cache lookups and hits, in tokens.
    pub prefix_query_tokens: u64,
    pub prefix_hit_tokens: u64,
}

/// The block pool and the operations the scheduler needs.
#[derive(Debug)]
pub struct BlockManager {
    pool: Rc<RefCell<Pool>>,
    block_size: usize,
    num_blocks: usize,
    prefix_caching: bool,
}

impl BlockManager {
    /// A pool of `num_blocks` blocks of `block_size` tokens. Panics on `block_size == 0` (a programming error:
    /// configuration is validated before this).
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        let pool = Pool {
            ref_counts: vec![0; num_blocks],
            // Reverse so that block 0 is handed out first (stack pops from the end).
            free_plain: (0..num_blocks as BlockId).rev().collect(),
            free_cached: BTreeMap::new(),
            free_stamp: vec![None; num_blocks],
            clock: 0,
            key_of: vec![None; num_blocks],
            by_hash: HashMap::new(),
            prefix_queries: 0,
            prefix_hits: 0,
        };
        Self {
            pool: Rc::new(RefCell::new(pool)),
            block_size,
            num_blocks,
            prefix_caching,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn num_free(&self) -> usize {
        self.pool.borrow().num_free()
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks - self.num_free()
    }

    /// Fraction of blocks in use, 0–1.
    pub fn usage(&self) -> f64 {
        if self.num_blocks == 0 {
            0.0
        } else {
            self.num_used() as f64 / self.num_blocks as f64
        }
    }

    pub fn stats(&self) -> BlockUsage {
        let p = self.pool.borrow();
        BlockUsage {
            total: self.num_blocks,
            used: self.num_blocks - p.num_free(),
            prefix_query_tokens: p.prefix_queries,
            prefix_hit_tokens: p.prefix_hits,
        }
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// A new table for `tokens`, starting with the longest cached prefix of full blocks. Returns the table and the
    /// number of tokens whose K/V it already holds. At least one token is always left to compute (its logits are
    /// needed), so a fully cached prompt reuses all but its last block.
    pub fn start_sequence(&mut self, tokens: &[u32]) -> (BlockTable, usize) {
        let mut table = BlockTable::default();
        if !self.prefix_caching || tokens.is_empty() {
            return (table, 0);
        }
        let max_blocks = (tokens.len() - 1) / self.block_size;
        let mut p = self.pool.borrow_mut();
        let mut parent = ROOT_HASH;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let hash = block_hash(parent, chunk);
            let Some(&id) = p.by_hash.get(&hash) else {
                break;
            };
            let matches = p.key_of[id as usize]
                .as_ref()
                .is_some_and(|(_, k)| k.parent == parent && k.tokens == chunk);
            if !matches {
                break;
            }
            p.acquire(id);
            table.blocks.push(BlockRef {
                id,
                pool: Rc::clone(&self.pool),
            });
            table.hashes.push(hash);
            parent = hash;
        }
        let cached = table.blocks.len() * self.block_size;
        drop(p);
        (table, cached)
    }

    /// Counts one prefix-cache lookup of `queried` tokens of which `hit` were cached (called once per admission,
    /// not per attempt).
    pub fn record_prefix_lookup(&mut self, queried: usize, hit: usize) {
        let mut p = self.pool.borrow_mut();
        p.prefix_queries += queried as u64;
        p.prefix_hits += hit as u64;
    }

    /// Grows `table` to cover `num_tokens` tokens. All-or-nothing: `None` (and no change) when the pool has too
    /// few free blocks.
    pub fn allocate(&mut self, table: &mut BlockTable, num_tokens: usize) -> Option<()> {
        let need = self
            .blocks_for(num_tokens)
            .saturating_sub(table.blocks.len());
        let mut p = self.pool.borrow_mut();
        if need > p.num_free() {
            return None;
        }
        for _ in 0..need {
            let id = p.take_free()?;
            table.blocks.push(BlockRef {
                id,
                pool: Rc::clone(&self.pool),
            });
        }
        Some(())
    }

    /// Whether `extra_blocks` more blocks could be allocated now.
    pub fn can_allocate(&self, extra_blocks: usize) -> bool {
        extra_blocks <= self.num_free()
    }

    /// Registers the full blocks of `table` whose K/V is now computed (`num_computed` tokens of `tokens`) in the
    /// prefix cache. A block whose content is already cached under another id stays private (first one wins).
    pub fn commit(&mut self, table: &mut BlockTable, tokens: &[u32], num_computed: usize) {
        if !self.prefix_caching {
            return;
        }
        let full = (num_computed.min(tokens.len()) / self.block_size).min(table.blocks.len());
        let mut p = self.pool.borrow_mut();
        while table.hashes.len() < full {
            let i = table.hashes.len();
            let parent = table.hashes.last().copied().unwrap_or(ROOT_HASH);
            let chunk = &tokens[i * self.block_size..(i + 1) * self.block_size];
            let hash = block_hash(parent, chunk);
            let id = table.blocks[i].id;
            if !p.by_hash.contains_key(&hash) && p.key_of[id as usize].is_none() {
                p.by_hash.insert(hash, id);
                p.key_of[id as usize] = Some((
                    hash,
                    BlockKey {
                        parent,
                        tokens: chunk.to_vec(),
                    },
                ));
            }
            table.hashes.push(hash);
        }
    }

    /// Drops every cached prefix held by free blocks (they become plain free blocks).
    pub fn reset_prefix_cache(&mut self) {
        let mut p = self.pool.borrow_mut();
        let cached: Vec<BlockId> = std::mem::take(&mut p.free_cached).into_values().collect();
        for id in cached {
            p.free_stamp[id as usize] = None;
            if let Some((hash, _)) = p.key_of[id as usize].take() {
                p.by_hash.remove(&hash);
            }
            p.free_plain.push(id);
        }
    }

    #[cfg(test)]
    fn ref_count(&self, id: BlockId) -> u32 {
        self.pool.borrow().ref_counts[id as usize]
    }
}

#[cfg(test)]
mod tests;
