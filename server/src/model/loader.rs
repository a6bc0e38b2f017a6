//! Reading a model's tensors out of a GGUF file into layers: shapes checked against the config, each tensor
//! split for this tensor-parallel rank before Q|K|V and gate|up are fused.

use std::io::{Read, Seek};

use candle_core::quantized::QTensor;
use candle_core::{DType, Device};

use super::parallel::{ColumnParallel, LmHead, RowParallel};
use super::shard::{Split, shard};
use super::{Linear, LoadError, LoadOptions, RmsNorm, TensorParallel};
use crate::gguf::GgufFile;

pub(super) struct Loader<'a, R> {
    pub(super) file: &'a mut GgufFile<R>,
    pub(super) device: &'a Device,
    pub(super) opts: LoadOptions,
    pub(super) tp: &'a TensorParallel,
}

impl<R: Read + Seek> Loader<'_, R> {
    pub(super) fn raw(
        &mut self,
        name: &str,
        want: &[usize],
    ) -> std::result::Result<QTensor, LoadError> {
        let t = self.file.tensor(name)?;
        if t.shape().dims() != want {
            return Err(LoadError::Shape {
                name: name.into(),
                got: t.shape().dims().to_vec(),
                want: want.to_vec(),
            });
        }
        Ok(t)
    }

    /// `name` (`[rows, cols]`), this rank's part of it when split along `split`.
    pub(super) fn part(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        split: Split,
    ) -> std::result::Result<QTensor, LoadError> {
        let t = self.raw(name, &[rows, cols])?;
        let (rank, size) = (self.tp.rank(), self.tp.size());
        if size == 1 {
            return Ok(t);
        }
        Ok(shard(name, &t, split, rank, size, &Device::Cpu)?)
    }

    pub(super) fn build(
        &self,
        names: &str,
        parts: Vec<QTensor>,
    ) -> std::result::Result<Linear, LoadError> {
        Linear::fused(parts, self.device, self.opts).map_err(|source| LoadError::Build {
            name: names.to_owned(),
            source,
        })
    }

    /// A column-parallel layer: each part split by rows first (a fused matrix cannot be), then fused.
    pub(super) fn column(
        &mut self,
        names: &[(&str, usize)],
        cols: usize,
    ) -> std::result::Result<ColumnParallel, LoadError> {
        let mut parts = Vec::with_capacity(names.len());
        for &(name, rows) in names {
            parts.push(self.part(name, rows, cols, Split::Rows)?);
        }
        let joined = names.iter().map(|(n, _)| *n).collect::<Vec<_>>().join("+");
        Ok(ColumnParallel(self.build(&joined, parts)?))
    }

    /// A row-parallel layer: this rank's columns, followed by an all-reduce.
    pub(super) fn row(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> std::result::Result<RowParallel, LoadError> {
        let part = self.part(name, rows, cols, Split::Cols)?;
        Ok(RowParallel {
            linear: self.build(name, vec![part])?,
            comm: self.tp.comm.clone(),
        })
    }

    /// The LM head from `name` (`output.weight`, or the tied embedding): vocab-parallel when the group
    /// size divides the vocabulary, else replicated.
    pub(super) fn lm_head(
        &mut self,
        name: &str,
        vocab: usize,
        cols: usize,
        opts: LoadOptions,
    ) -> std::result::Result<LmHead, LoadError> {
        let size = self.tp.size();
        let build = |w: QTensor, device: &Device| {
            Linear::new(w, device, opts).map_err(|source| LoadError::Build {
                name: name.to_owned(),
                source,
            })
        };
        if size > 1 && vocab.is_multiple_of(size) && !self.opts.replicate_lm_head {
            let part = self.part(name, vocab, cols, Split::Rows)?;
            return Ok(LmHead::VocabParallel {
                linear: build(part, self.device)?,
                comm: self.tp.comm.clone(),
            });
        }
        let w = self.raw(name, &[vocab, cols])?;
        Ok(LmHead::Replicated(build(w, self.device)?))
    }

    pub(super) fn norm(
        &mut self,
        name: &str,
        dim: usize,
    ) -> std::result::Result<RmsNorm, LoadError> {
        let t = self.raw(name, &[dim])?;
        let weight = t
            .dequantize(&Device::Cpu)
            .and_then(|w| w.to_dtype(DType::F32))
            .and_then(|w| w.to_device(self.device))
            .map_err(|source| LoadError::Build {
                name: name.into(),
                source,
            })?;
        Ok(RmsNorm { weight })
    }
}
