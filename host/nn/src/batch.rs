//! Opportunistic batching: inferences of one model that wait at the same time run as one
//! backend call, which keeps a CPU or GPU busier per call than many small ones.
//!
//! Nothing waits on a timer. Every inference joins the model's `pending` list and its fair
//! queue as usual; whoever gets a compute slot takes its own inference (if nobody took it yet)
//! and then the oldest compatible ones still pending, up to `max_rows` rows, runs them as one
//! batch and hands each caller its rows of the outputs. A caller whose inference was taken
//! into someone else's batch leaves the queue as soon as its rows arrive. Under light load
//! every batch is a single inference; under load batches fill from the backlog. A model of
//! microseconds, whose computes run on the async thread and never form a backlog, is gathered
//! instead: each caller yields once before taking a slot (`Model::compute_batched`), so the
//! inferences its thread has ready join the batch.
//!
//! Compatible: same input names, types and shapes apart from the leading (batch) axis, and,
//! when the model declares `pad`, apart from axis 1 as well (sequence length): shorter inputs
//! are padded with zeros on axis 1 (for BERT-style models: the padding token 0 and attention
//! mask 0), and every output whose axis 1 has the padded length is cut back to each caller's
//! length. A batch never pads more than half again the tokens it really holds.
//!
//! A batch that fails because of one caller's input must not fail the others: it is run again
//! one inference at a time. Each caller is charged its share of the batch's compute time (by
//! rows times length).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use wasmtime_wasi_nn::ExecutionContext;
use wasmtime_wasi_nn::backend::NamedTensor;
use wasmtime_wasi_nn::wit::TensorType;

use crate::{NnError, Tensor, catch_panic, from_backend_error};

/// How a model batches, from its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// The most rows (sum of the leading dimensions) one backend call may hold.
    pub max_rows: u32,
    /// Pad axis 1 (sequence length) with zeros so inputs of different lengths batch together.
    pub pad: bool,
}

/// One caller's rows of a batch's outputs, and its share of the compute time.
pub(crate) type Reply = Result<(Vec<NamedTensor>, Duration), NnError>;

/// The inferences of one model waiting to be batched.
pub(crate) struct Batcher {
    spec: Batching,
    pending: Mutex<VecDeque<Job>>,
    next_id: AtomicU64,
    /// Inferences that ran inside a batch of more than one.
    batched: AtomicU64,
}

/// One caller's inference, until a compute slot's holder takes it.
pub(crate) struct Job {
    id: u64,
    shape: Shape,
    inputs: Vec<NamedTensor>,
    reply: oneshot::Sender<Reply>,
}

/// What must match for two inferences to batch, and how big each is.
#[derive(Clone, Debug, PartialEq)]
struct Shape {
    /// (name, type, dims with axis 0 (and axis 1 when padding) zeroed) of every input.
    key: Vec<(String, TensorType, Vec<u32>)>,
    rows: u32,
    /// Axis-1 length (1 for inputs of one dimension, or when not padding).
    len: u32,
}

/// Removes a caller's job from the pending list if nobody took it (the caller gave up).
pub(crate) struct Ticket<'a> {
    batcher: &'a Batcher,
    pub id: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut pending = self.batcher.lock();
        if let Some(at) = pending.iter().position(|j| j.id == self.id) {
            pending.remove(at);
        }
    }
}

impl Batcher {
    pub(crate) fn new(spec: Batching) -> Self {
        Batcher {
            spec,
            pending: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(1),
            batched: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn batched(&self) -> u64 {
        self.batched.load(Ordering::Relaxed)
    }

    /// Queues `inputs` for batching; `None` (inputs handed back) when they cannot batch: no
    /// leading axis, inconsistent rows or lengths, or byte lengths that do not fit the shapes
    /// (the backend then reports the problem to this caller alone).
    pub(crate) fn push(
        &self,
        inputs: Vec<NamedTensor>,
    ) -> Result<(Ticket<'_>, oneshot::Receiver<Reply>), Vec<NamedTensor>> {
        let Some(shape) = shape_of(&inputs, self.spec.pad) else {
            return Err(inputs);
        };
        if shape.rows > self.spec.max_rows {
            return Err(inputs);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, receiver) = oneshot::channel();
        self.lock().push_back(Job {
            id,
            shape,
            inputs,
            reply,
        });
        Ok((Ticket { batcher: self, id }, receiver))
    }

    /// The jobs the holder of a compute slot runs: its own (`id`) if still pending, then the
    /// oldest compatible others, within `max_rows` and the padding allowance. Empty when its
    /// own job was already taken and nothing else waits.
    pub(crate) fn take(&self, id: u64) -> Vec<Job> {
        let mut pending = self.lock();
        pending.retain(|j| !j.reply.is_closed());
        let first = match pending.iter().position(|j| j.id == id) {
            Some(at) => at,
            None if pending.is_empty() => return Vec::new(),
            None => 0,
        };
        let Some(head) = pending.remove(first) else {
            return Vec::new();
        };
        let mut rows = head.shape.rows;
        let mut longest = head.shape.len;
        let mut real = u64::from(head.shape.rows) * u64::from(head.shape.len);
        let mut jobs = vec![head];
        let mut at = 0;
        while at < pending.len() && rows < self.spec.max_rows {
            let job = &pending[at];
            let fits = job.shape.key == jobs[0].shape.key
                && rows + job.shape.rows <= self.spec.max_rows
                && {
                    let len = longest.max(job.shape.len);
                    let real = real + u64::from(job.shape.rows) * u64::from(job.shape.len);
                    // Padded cells at most half again the real ones.
                    2 * u64::from(rows + job.shape.rows) * u64::from(len) <= 3 * real
                };
            if fits {
                let job = pending.remove(at).expect("index is in range");
                rows += job.shape.rows;
                longest = longest.max(job.shape.len);
                real += u64::from(job.shape.rows) * u64::from(job.shape.len);
                jobs.push(job);
            } else {
                at += 1;
            }
        }
        jobs
    }

    /// Runs `jobs` as one backend call on `ctx` (blocking) and answers each caller; returns
    /// whether the backend succeeded for all of them.
    pub(crate) fn run(&self, ctx: &mut ExecutionContext, jobs: Vec<Job>) -> bool {
        if jobs.len() == 1 {
            let job = jobs.into_iter().next().expect("one job");
            let started = Instant::now();
            let result = compute(ctx, job.inputs);
            let ok = result.is_ok();
            let _ = job.reply.send(result.map(|o| (o, started.elapsed())));
            return ok;
        }
        let started = Instant::now();
        let merged = merge(&jobs, self.spec.pad);
        match compute(ctx, merged).and_then(|outputs| split(&jobs, &outputs, self.spec.pad)) {
            Ok(parts) => {
                let elapsed = started.elapsed();
                let cells: u64 = jobs.iter().map(|j| j.shape.cells()).sum();
                self.batched.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                for (job, outputs) in jobs.into_iter().zip(parts) {
                    let share = elapsed.mul_f64(job.shape.cells() as f64 / cells.max(1) as f64);
                    let _ = job.reply.send(Ok((outputs, share)));
                }
                true
            }
            // Somebody's input (or the batch as a whole) upset the backend: one at a time, so
            // each caller gets its own answer.
            Err(_) => {
                let mut all_ok = true;
                for job in jobs {
                    let started = Instant::now();
                    let result = compute(ctx, job.inputs);
                    all_ok &= result.is_ok();
                    let _ = job.reply.send(result.map(|o| (o, started.elapsed())));
                }
                all_ok
            }
        }
    }
}

impl Shape {
    fn cells(&self) -> u64 {
        u64::from(self.rows) * u64::from(self.len)
    }
}

fn compute(
    ctx: &mut ExecutionContext,
    inputs: Vec<NamedTensor>,
) -> Result<Vec<NamedTensor>, NnError> {
    catch_panic(|| ctx.compute_with_io(inputs))
        .map_err(|panic| NnError::Backend(format!("the backend panicked: {panic}")))?
        .map_err(from_backend_error)
}

/// The batching shape of one inference's inputs, if it has one.
fn shape_of(inputs: &[NamedTensor], pad: bool) -> Option<Shape> {
    let first = inputs.first()?;
    let rows = *first.tensor.dimensions.first()?;
    let len = if pad {
        first.tensor.dimensions.get(1).copied().unwrap_or(1)
    } else {
        1
    };
    let mut key = Vec::with_capacity(inputs.len());
    for t in inputs {
        let dims = &t.tensor.dimensions;
        if dims.first() != Some(&rows) || rows == 0 {
            return None;
        }
        if pad && dims.len() >= 2 && dims[1] != len {
            return None;
        }
        let elements = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d as usize))?;
        if elements.checked_mul(crate::backend::element_size(t.tensor.ty))? != t.tensor.data.len() {
            return None;
        }
        let mut shape = dims.clone();
        shape[0] = 0;
        if pad && shape.len() >= 2 {
            shape[1] = 0;
        }
        key.push((t.name.clone(), t.tensor.ty, shape));
    }
    Some(Shape { key, rows, len })
}

/// The jobs' inputs stacked on axis 0, padded with zeros on axis 1 to the longest.
fn merge(jobs: &[Job], pad: bool) -> Vec<NamedTensor> {
    let rows: u32 = jobs.iter().map(|j| j.shape.rows).sum();
    let longest = jobs.iter().map(|j| j.shape.len).max().unwrap_or(1);
    jobs[0]
        .inputs
        .iter()
        .enumerate()
        .map(|(i, first)| {
            let padded = pad && first.tensor.dimensions.len() >= 2;
            let mut dims = first.tensor.dimensions.clone();
            dims[0] = rows;
            if padded {
                dims[1] = longest;
            }
            let mut data = Vec::with_capacity(
                dims.iter().map(|&d| d as usize).product::<usize>()
                    * crate::backend::element_size(first.tensor.ty),
            );
            for job in jobs {
                let t = &job.inputs[i].tensor;
                if padded && job.shape.len < longest {
                    // Each row: its own cells, then zeros up to the longest.
                    let row_bytes = t.data.len() / job.shape.rows as usize;
                    let padded_row = row_bytes / job.shape.len as usize * longest as usize;
                    for row in t.data.chunks_exact(row_bytes) {
                        data.extend_from_slice(row);
                        data.resize(data.len() + padded_row - row_bytes, 0);
                    }
                } else {
                    data.extend_from_slice(&t.data);
                }
            }
            NamedTensor {
                name: first.name.clone(),
                tensor: Tensor::new(dims, first.tensor.ty, data),
            }
        })
        .collect()
}

/// Each job's rows of the batch's outputs, cut back to its own length on axis 1 when padded.
fn split(
    jobs: &[Job],
    outputs: &[NamedTensor],
    pad: bool,
) -> Result<Vec<Vec<NamedTensor>>, NnError> {
    let rows: u32 = jobs.iter().map(|j| j.shape.rows).sum();
    let longest = jobs.iter().map(|j| j.shape.len).max().unwrap_or(1);
    let mut parts: Vec<Vec<NamedTensor>> = jobs.iter().map(|_| Vec::new()).collect();
    for output in outputs {
        let dims = &output.tensor.dimensions;
        if dims.first() != Some(&rows) {
            return Err(NnError::Backend(format!(
                "output `{}` has shape {dims:?}: its leading axis is not the batch of {rows}",
                output.name
            )));
        }
        let row_bytes = output.tensor.data.len() / rows as usize;
        let trims = pad && dims.len() >= 2 && dims[1] == longest;
        let mut offset = 0;
        for (job, part) in jobs.iter().zip(&mut parts) {
            let n = job.shape.rows as usize;
            let mine = &output.tensor.data[offset..offset + n * row_bytes];
            offset += n * row_bytes;
            let mut own = dims.clone();
            own[0] = job.shape.rows;
            let data = if trims && job.shape.len < longest {
                own[1] = job.shape.len;
                let keep = row_bytes / longest as usize * job.shape.len as usize;
                mine.chunks_exact(row_bytes)
                    .flat_map(|row| &row[..keep])
                    .copied()
                    .collect()
            } else {
                mine.to_vec()
            };
            part.push(NamedTensor {
                name: output.name.clone(),
                tensor: Tensor::new(own, output.tensor.ty, data),
            });
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(name: &str, rows: &[&[i64]]) -> NamedTensor {
        let len = rows[0].len() as u32;
        NamedTensor {
            name: name.into(),
            tensor: Tensor::new(
                vec![rows.len() as u32, len],
                TensorType::I64,
                rows.iter()
                    .flat_map(|r| r.iter().flat_map(|v| v.to_le_bytes()))
                    .collect(),
            ),
        }
    }

    fn job<'b>(b: &'b Batcher, rows: &[&[i64]]) -> (Ticket<'b>, oneshot::Receiver<Reply>) {
        b.push(vec![ids("input_ids", rows), ids("attention_mask", rows)])
            .ok()
            .expect("batchable")
    }

    #[test]
    fn pads_merges_and_splits_back() {
        let b = Batcher::new(Batching {
            max_rows: 8,
            pad: true,
        });
        let (t1, _r1) = job(&b, &[&[1, 2, 3]]);
        let (_t2, _r2) = job(&b, &[&[4, 5], &[6, 7]]);
        let jobs = b.take(t1.id);
        assert_eq!(jobs.len(), 2);
        let merged = merge(&jobs, true);
        assert_eq!(merged[0].tensor.dimensions, vec![3, 3]);
        let values: Vec<i64> = merged[0]
            .tensor
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(values, vec![1, 2, 3, 4, 5, 0, 6, 7, 0]);
        // An output shaped [rows, len, 1] comes back cut to each job's length.
        let parts = split(&jobs, &merged, true).unwrap();
        assert_eq!(parts[0][0].tensor.dimensions, vec![1, 3]);
        assert_eq!(parts[1][0].tensor.dimensions, vec![2, 2]);
        let back: Vec<i64> = parts[1][0]
            .tensor
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(back, vec![4, 5, 6, 7]);
    }

    #[test]
    fn keeps_within_rows_and_padding_allowance() {
        let b = Batcher::new(Batching {
            max_rows: 3,
            pad: true,
        });
        let (t1, _r1) = job(&b, &[&[1]]);
        // Length 8 next to length 1 would be mostly padding.
        let (_t2, _r2) = job(&b, &[&[1; 8]]);
        let (_t3, _r3) = job(&b, &[&[2]]);
        let (_t4, _r4) = job(&b, &[&[3]]);
        let (_t5, _r5) = job(&b, &[&[4]]);
        let jobs = b.take(t1.id);
        let lens: Vec<u32> = jobs.iter().map(|j| j.shape.len).collect();
        assert_eq!(lens, vec![1, 1, 1], "max_rows 3, the long one skipped");
        // The long one is still pending and leads the next batch.
        let next = b.take(0);
        assert_eq!(next[0].shape.len, 8);
    }

    #[test]
    fn a_caller_that_gives_up_leaves_the_list() {
        let b = Batcher::new(Batching {
            max_rows: 8,
            pad: false,
        });
        let (t1, r1) = job(&b, &[&[1, 2]]);
        drop(r1);
        drop(t1);
        assert!(b.take(0).is_empty());
        // Without padding, different lengths do not batch.
        let (t2, _r2) = job(&b, &[&[1, 2]]);
        let (_t3, _r3) = job(&b, &[&[1, 2, 3]]);
        assert_eq!(b.take(t2.id).len(), 1);
    }
}
