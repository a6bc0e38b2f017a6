//! NCCL through cudarc (the `nccl` feature): one rank per GPU, all ranks threads of this process
//! (`ncclCommInitAll` over the ranks' CUDA streams). Collectives run on the device, on each rank's own stream,
//! in the order every rank calls them — the same contract as [`super::CpuGroup`].
//!
//! Compile-checked here (`make cuda-check`); it has not run: no machine with two GPUs has been lent.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::CudaSlice;
use candle_core::cuda::cudarc::nccl::safe::{Comm, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};

use super::{CommError, Communicator};

/// One rank of an NCCL group.
pub struct NcclComm {
    rank: usize,
    size: usize,
    device: Device,
    /// NCCL communicators are not thread-safe; each rank's is used by its own worker thread only, the lock
    /// makes that a checked fact rather than an assumption.
    comm: Arc<Mutex<RankComm>>,
    aborted: Mutex<Option<String>>,
}

/// cudarc's `Comm` holds the raw `ncclComm_t`, so it is not `Send`.
struct RankComm(Comm);

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not concurrent; it is
// only reached through the `Mutex` above, one caller at a time.
#[allow(unsafe_code)]
unsafe impl Send for RankComm {}

impl NcclComm {
    /// One communicator per device, rank r on `devices[r]` (all CUDA devices of this process).
    pub fn connect(devices: &[Device]) -> Result<Vec<NcclComm>, String> {
        let streams = devices
            .iter()
            .map(|d| d.as_cuda_device().map(|c| c.cuda_stream()))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(|e| format!("NCCL needs CUDA devices: {e}"))?;
        let comms =
            Comm::from_devices(streams).map_err(|e| format!("ncclCommInitAll failed: {e:?}"))?;
        let size = comms.len();
        Ok(comms
            .into_iter()
            .zip(devices)
            .enumerate()
            .map(|(rank, (comm, device))| NcclComm {
                rank,
                size,
                device: device.clone(),
                comm: Arc::new(Mutex::new(RankComm(comm))),
                aborted: Mutex::new(None),
            })
            .collect())
    }

    fn check(&self) -> Result<(), CommError> {
        match self.aborted.lock().map(|a| a.clone()) {
            Ok(Some(why)) => Err(CommError::Aborted(why)),
            _ => Ok(()),
        }
    }

    fn run(&self, x: &Tensor, op: Collective) -> candle_core::Result<Tensor> {
        self.check()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        x.contiguous()?.apply_op1_no_bwd(&Op {
            comm: self.comm.clone(),
            op,
            size: self.size,
        })
    }

    /// A host buffer through a device collective (the trait's host-side methods).
    fn host(
        &self,
        buf: &[f32],
        op: Collective,
        out: &mut [f32],
        what: &'static str,
    ) -> Result<(), CommError> {
        self.check()?;
        let failed = |e: candle_core::Error| CommError::Aborted(format!("NCCL {what}: {e}"));
        let x = Tensor::from_slice(buf, buf.len(), &self.device).map_err(failed)?;
        let y = self
            .run(&x, op)
            .and_then(|y| y.to_vec1::<f32>())
            .map_err(failed)?;
        if y.len() != out.len() {
            return Err(CommError::Length {
                rank: self.rank,
                what,
                got: out.len(),
                want: y.len(),
            });
        }
        out.copy_from_slice(&y);
        Ok(())
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError> {
        let input = buf.to_vec();
        self.host(&input, Collective::AllReduceSum, buf, "all_reduce")
    }

    fn all_gather(&self, local: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        self.host(local, Collective::AllGather, out, "all_gather")
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        if root >= self.size {
            return Err(CommError::BadRoot {
                root,
                size: self.size,
            });
        }
        let input = buf.to_vec();
        self.host(&input, Collective::Broadcast(root), buf, "broadcast")
    }

    fn abort(&self, why: &str) {
        // NCCL has ncclCommAbort, which cudarc does not expose safely: later collectives of this rank fail
        // here instead, and a peer blocked inside NCCL is released when the group is dropped.
        if let Ok(mut a) = self.aborted.lock()
            && a.is_none()
        {
            *a = Some(format!("rank {}: {why}", self.rank));
        }
    }

    fn all_reduce_tensor(&self, x: &Tensor) -> Option<candle_core::Result<Tensor>> {
        Some(self.run(x, Collective::AllReduceSum))
    }

    fn all_gather_tensor(&self, x: &Tensor) -> Option<candle_core::Result<Tensor>> {
        Some(self.run(x, Collective::AllGather))
    }
}

#[derive(Debug, Clone, Copy)]
enum Collective {
    AllReduceSum,
    /// Output `[size × n]`, rank-major.
    AllGather,
    Broadcast(usize),
}

/// A collective as a candle op on the rank's own stream (f32, contiguous input).
struct Op {
    comm: Arc<Mutex<RankComm>>,
    op: Collective,
    size: usize,
}

impl CustomOp1 for Op {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL collectives run on CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        if !l.is_contiguous() {
            candle_core::bail!("NCCL collectives need contiguous tensors");
        }
        let n = l.shape().elem_count();
        let dev = s.device().clone();
        let src = s
            .as_cuda_slice::<f32>()?
            .slice(l.start_offset()..l.start_offset() + n);
        let guard = self
            .comm
            .lock()
            .map_err(|_| candle_core::Error::Msg("NCCL communicator poisoned".into()))?;
        let comm = &guard.0;
        let nccl = |e| candle_core::Error::Msg(format!("NCCL: {e:?}"));
        let (out, shape): (CudaSlice<f32>, Shape) = match self.op {
            Collective::AllReduceSum => {
                let mut out = dev.alloc_zeros::<f32>(n)?;
                comm.all_reduce(&src, &mut out, &ReduceOp::Sum)
                    .map_err(nccl)?;
                (out, l.shape().clone())
            }
            Collective::AllGather => {
                let mut out = dev.alloc_zeros::<f32>(n * self.size)?;
                comm.all_gather(&src, &mut out).map_err(nccl)?;
                (out, Shape::from(n * self.size))
            }
            Collective::Broadcast(root) => {
                let mut out = dev.alloc_zeros::<f32>(n)?;
                comm.broadcast(Some(&src), &mut out, root as i32)
                    .map_err(nccl)?;
                (out, l.shape().clone())
            }
        };
        Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
    }
}
