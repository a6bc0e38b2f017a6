//! Collective communication between tensor-parallel ranks.
//!
//! [`Communicator`] is what a rank's forward pass needs: the all-reduce after a row-parallel layer, the
//! all-gather of a vocab-parallel LM head, and a broadcast from rank 0. [`CpuGroup`] implements it for ranks
//! that are threads of one process (the CPU path; NCCL through cudarc is the GPU one).
//!
//! Reductions are deterministic: element i is always summed in rank order 0, 1, …, n−1, whoever computes it
//! and however the ranks interleave, so a TP run is reproducible and every rank holds bit-identical results.
//! A rank that fails calls [`Communicator::abort`]: every rank waiting in, or later entering, a collective gets
//! [`CommError::Aborted`] instead of waiting forever.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(feature = "nccl")]
pub mod nccl;

/// Why a collective did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommError {
    #[error("tensor-parallel group aborted: {0}")]
    Aborted(String),
    #[error("rank {rank}: {what} of {got} values, expected {want}")]
    Length {
        rank: usize,
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error("broadcast root {root} is not a rank of a group of {size}")]
    BadRoot { root: usize, size: usize },
}

/// The collectives of one rank of a tensor-parallel group. Every rank must call the same collectives in the
/// same order with buffers of the same length.
pub trait Communicator: Send + Sync {
    /// This rank, 0-based.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn size(&self) -> usize;
    /// Replaces `buf` on every rank by the element-wise sum of all ranks' `buf`.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError>;
    /// `out` (length `size × local.len()`) receives every rank's `local`, in rank order.
    fn all_gather(&self, local: &[f32], out: &mut [f32]) -> Result<(), CommError>;
    /// Replaces `buf` on every rank by `root`'s.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError>;
    /// Fails every pending and future collective of the group with `why`.
    fn abort(&self, why: &str);
    /// The all-reduce of an f32 tensor where it lives (NCCL on GPUs), or `None`: copy through the host with
    /// [`Communicator::all_reduce_sum`].
    fn all_reduce_tensor(
        &self,
        _x: &candle_core::Tensor,
    ) -> Option<candle_core::Result<candle_core::Tensor>> {
        None
    }
    /// The all-gather of an f32 tensor where it lives, flattened rank-major (`[size × n]`), or `None`.
    fn all_gather_tensor(
        &self,
        _x: &candle_core::Tensor,
    ) -> Option<candle_core::Result<candle_core::Tensor>> {
        None
    }
}

/// The state every rank of a [`CpuGroup`] shares.
struct Shared {
    size: usize,
    state: Mutex<State>,
    turn: Condvar,
}

struct State {
    /// Each rank's contribution to the current collective.
    inputs: Vec<Vec<f32>>,
    /// The reduced values (all-reduce), written chunk by chunk by the ranks.
    result: Vec<f32>,
    arrived: usize,
    generation: u64,
    aborted: Option<String>,
}

/// One rank of a group of threads in this process.
pub struct CpuComm {
    rank: usize,
    shared: Arc<Shared>,
}

/// Creates the ranks of a CPU group: hand one to each rank's thread.
pub struct CpuGroup;

impl CpuGroup {
    /// `size` connected ranks, rank i at index i.
    pub fn connect(size: usize) -> Vec<CpuComm> {
        let shared = Arc::new(Shared {
            size,
            state: Mutex::new(State {
                inputs: vec![Vec::new(); size],
                result: Vec::new(),
                arrived: 0,
                generation: 0,
                aborted: None,
            }),
            turn: Condvar::new(),
        });
        (0..size)
            .map(|rank| CpuComm {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl CpuComm {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked while holding the lock leaves the data as consistent as `abort` would.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until every rank has arrived (a barrier over the group), holding the lock on return.
    fn barrier<'a>(
        &self,
        mut st: MutexGuard<'a, State>,
    ) -> Result<MutexGuard<'a, State>, CommError> {
        if let Some(why) = &st.aborted {
            return Err(CommError::Aborted(why.clone()));
        }
        st.arrived += 1;
        if st.arrived == self.shared.size {
            st.arrived = 0;
            st.generation += 1;
            self.shared.turn.notify_all();
            return Ok(st);
        }
        let mine = st.generation;
        while st.generation == mine {
            if let Some(why) = &st.aborted {
                return Err(CommError::Aborted(why.clone()));
            }
            st = self
                .shared
                .turn
                .wait(st)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        Ok(st)
    }

    fn check_len(&self, what: &'static str, got: usize, want: usize) -> Result<(), CommError> {
        if got == want {
            Ok(())
        } else {
            let e = CommError::Length {
                rank: self.rank,
                what,
                got,
                want,
            };
            self.abort(&e.to_string());
            Err(e)
        }
    }

    /// Phase 1 of every collective: publish this rank's values and wait for the others'.
    fn publish(&self, values: &[f32]) -> Result<MutexGuard<'_, State>, CommError> {
        let mut st = self.lock();
        if let Some(why) = &st.aborted {
            return Err(CommError::Aborted(why.clone()));
        }
        st.inputs[self.rank].clear();
        st.inputs[self.rank].extend_from_slice(values);
        let st = self.barrier(st)?;
        let want = st.inputs[0].len();
        let got = st.inputs[self.rank].len();
        if st.inputs.iter().any(|v| v.len() != want) {
            drop(st);
            self.check_len("buffer", got, want)?;
            return Err(CommError::Aborted(
                "ranks passed buffers of different lengths".into(),
            ));
        }
        Ok(st)
    }
}

impl Communicator for CpuComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError> {
        if self.shared.size == 1 {
            return Ok(());
        }
        let n = buf.len();
        let size = self.shared.size;
        let mut st = self.publish(buf)?;
        // Each rank reduces its own chunk (rank order within every element), then all copy the result.
        let (lo, hi) = (n * self.rank / size, n * (self.rank + 1) / size);
        if st.result.len() != n {
            st.result.resize(n, 0.0);
        }
        for i in lo..hi {
            let mut sum = 0.0f32;
            for r in 0..size {
                sum += st.inputs[r][i];
            }
            st.result[i] = sum;
        }
        let st = self.barrier(st)?;
        buf.copy_from_slice(&st.result);
        // Nobody may overwrite `result` or `inputs` before every rank has copied.
        drop(self.barrier(st)?);
        Ok(())
    }

    fn all_gather(&self, local: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        let size = self.shared.size;
        self.check_len("all_gather output", out.len(), size * local.len())?;
        let st = self.publish(local)?;
        for (r, chunk) in out
            .chunks_exact_mut(local.len().max(1))
            .enumerate()
            .take(size)
        {
            chunk.copy_from_slice(&st.inputs[r]);
        }
        drop(self.barrier(st)?);
        Ok(())
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        let size = self.shared.size;
        if root >= size {
            return Err(CommError::BadRoot { root, size });
        }
        let st = self.publish(buf)?;
        if self.rank != root {
            buf.copy_from_slice(&st.inputs[root]);
        }
        drop(self.barrier(st)?);
        Ok(())
    }

    fn abort(&self, why: &str) {
        let mut st = self.lock();
        if st.aborted.is_none() {
            st.aborted = Some(format!("rank {}: {why}", self.rank));
        }
        self.shared.turn.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// Runs `f(rank, comm)` on one thread per rank and returns each rank's result, in rank order.
    fn on_ranks<T: Send + 'static>(
        size: usize,
        f: impl Fn(usize, CpuComm) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = CpuGroup::connect(size)
            .into_iter()
            .enumerate()
            .map(|(r, c)| {
                let f = f.clone();
                thread::spawn(move || f(r, c))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    }

    fn values(rank: usize, n: usize) -> Vec<f32> {
        // Magnitudes far apart, so that a different summation order would change the rounded sums.
        (0..n)
            .map(|i| {
                ((i * 7 + rank * 13) % 17) as f32 * 10f32.powi((rank as i32 * 3) % 8 - 4) + 0.1
            })
            .collect()
    }

    #[test]
    fn all_reduce_sums_in_rank_order_and_every_rank_gets_the_same_bits() {
        for size in [1, 2, 3, 4] {
            for n in [0, 1, 5, 64, 1001] {
                let want: Vec<f32> = (0..n)
                    .map(|i| {
                        let mut s = 0.0f32;
                        for r in 0..size {
                            s += values(r, n)[i];
                        }
                        s
                    })
                    .collect();
                let got = on_ranks(size, move |r, c| {
                    let mut buf = values(r, n);
                    for _ in 0..3 {
                        // repeated collectives reuse the shared buffers
                        buf = values(r, n);
                        c.all_reduce_sum(&mut buf).expect("all_reduce");
                    }
                    buf
                });
                for (r, g) in got.iter().enumerate() {
                    let same = g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "size {size}, n {n}: rank {r} differs from the rank-order sum"
                    );
                }
            }
        }
    }

    #[test]
    fn all_gather_and_broadcast_deliver_every_rank_its_data_in_rank_order() {
        let got = on_ranks(3, |r, c| {
            let mut out = vec![0.0; 6];
            c.all_gather(&[r as f32, 10.0 + r as f32], &mut out)
                .expect("all_gather");
            let mut b = vec![r as f32; 4];
            c.broadcast(&mut b, 2).expect("broadcast");
            (out, b)
        });
        for (out, b) in got {
            assert_eq!(out, vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0]);
            assert_eq!(b, vec![2.0; 4]);
        }
    }

    #[test]
    fn a_failing_rank_releases_the_others_with_its_reason() {
        let got = on_ranks(3, |r, c| {
            let mut buf = vec![1.0; 8];
            c.all_reduce_sum(&mut buf).expect("first collective");
            if r == 1 {
                c.abort("loading shard 1 failed");
                return Err(CommError::Aborted("self".into()));
            }
            c.all_reduce_sum(&mut buf)
        });
        for (r, res) in got.iter().enumerate().filter(|(r, _)| *r != 1) {
            let err = res.as_ref().expect_err("the group was aborted");
            assert_eq!(
                err.to_string(),
                "tensor-parallel group aborted: rank 1: loading shard 1 failed",
                "rank {r}"
            );
        }
    }

    #[test]
    fn mismatched_lengths_are_an_error_on_every_rank_not_a_hang() {
        let got = on_ranks(2, |r, c| {
            let mut buf = vec![1.0; 4 + r];
            c.all_reduce_sum(&mut buf)
        });
        assert!(got.iter().all(Result::is_err), "{got:?}");
        let on_rank1 = got[1].as_ref().expect_err("rank 1");
        assert!(
            on_rank1
                .to_string()
                .contains("rank 1: buffer of 5 values, expected 4"),
            "{on_rank1}"
        );
        let got = on_ranks(2, |_, c| c.broadcast(&mut [0.0], 5));
        assert!(
            got.iter()
                .all(|e| e == &Err(CommError::BadRoot { root: 5, size: 2 }))
        );
    }
}
