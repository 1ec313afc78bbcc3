//! Generations waiting for a free sequence, served fairly across tenants: a freed sequence
//! goes to the waiting tenant that has been served the fewest tokens relative to its weight
//! (start-time fair queueing over prompt plus `max_tokens`; a tenant that was idle re-enters
//! at the current virtual time, so idleness earns no credit). One tenant's backlog therefore
//! cannot hold the model from another: the other waits for about one sequence. The decode
//! thread also caps the sequences one tenant holds (see `engine`), so one tenant can never
//! take them all; `pop` skips tenants at their cap.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::Job;

#[derive(Default)]
pub(super) struct Waiting {
    lanes: HashMap<Arc<str>, Lane>,
    /// The pass of the last generation admitted: where idle tenants re-enter.
    virtual_time: f64,
    len: usize,
    /// The model is being dropped: the decode thread ends.
    pub(super) closed: bool,
}

struct Lane {
    jobs: VecDeque<Job>,
    pass: f64,
    weight: u32,
}

impl Waiting {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn push(&mut self, job: Job, weight: u32) {
        let virtual_time = self.virtual_time;
        let lane = self.lanes.entry(job.tenant.clone()).or_insert(Lane {
            jobs: VecDeque::new(),
            pass: virtual_time,
            weight,
        });
        if lane.jobs.is_empty() {
            lane.pass = lane.pass.max(virtual_time);
        }
        lane.weight = weight.max(1);
        lane.jobs.push_back(job);
        self.len += 1;
    }

    /// The next generation to admit, by the fairness rule above, among the tenants `may_take`
    /// lets in.
    pub(super) fn pop(&mut self, may_take: impl Fn(&str) -> bool) -> Option<Job> {
        let tenant = self
            .lanes
            .iter()
            .filter(|(tenant, lane)| !lane.jobs.is_empty() && may_take(tenant))
            .min_by(|a, b| a.1.pass.total_cmp(&b.1.pass))
            .map(|(tenant, _)| tenant.clone())?;
        let lane = self.lanes.get_mut(&tenant)?;
        let job = lane.jobs.pop_front()?;
        self.virtual_time = lane.pass;
        lane.pass += (job.tokens.len() as f64 + job.max_tokens as f64) / lane.weight as f64;
        self.len -= 1;
        if lane.jobs.is_empty() && lane.pass <= self.virtual_time {
            self.lanes.remove(&tenant);
        }
        Some(job)
    }

    /// Removes and returns the jobs for which `drop_it` says so (cancelled, waited too long).
    pub(super) fn drain_where(&mut self, mut drop_it: impl FnMut(&Job) -> bool) -> Vec<Job> {
        let mut out = Vec::new();
        for lane in self.lanes.values_mut() {
            let (gone, kept): (Vec<Job>, Vec<Job>) = lane.jobs.drain(..).partition(&mut drop_it);
            lane.jobs = kept.into();
            out.extend(gone);
        }
        self.len -= out.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU32};
    use std::time::Instant;

    use super::super::{Sampling, Stream, StreamState};
    use super::*;

    fn job(tenant: &str, tokens: usize) -> Job {
        Job {
            tokens: vec![0; tokens],
            sampling: Sampling::default(),
            max_tokens: 10,
            out: Arc::new(Stream {
                state: Mutex::new(StreamState::default()),
                ready: tokio::sync::Notify::new(),
                cancelled: AtomicBool::new(false),
                completion: AtomicU32::new(0),
                prompt: tokens as u32,
            }),
            tenant: Arc::from(tenant),
            plugin: Arc::from("p"),
            enqueued: Instant::now(),
        }
    }

    #[test]
    fn a_light_tenant_is_served_between_a_heavy_tenants_backlog() {
        let mut w = Waiting::default();
        for _ in 0..5 {
            w.push(job("heavy", 90), 1);
        }
        w.push(job("light", 90), 1);
        let order: Vec<String> = std::iter::from_fn(|| w.pop(|_| true))
            .map(|j| j.tenant.to_string())
            .collect();
        assert_eq!(order.len(), 6);
        let light_at = order.iter().position(|t| t == "light").unwrap();
        assert!(light_at <= 1, "{order:?}");
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn weights_share_sequences_in_proportion() {
        let mut w = Waiting::default();
        for _ in 0..30 {
            w.push(job("a", 90), 2);
            w.push(job("b", 90), 1);
        }
        let first: Vec<String> = (0..15)
            .map(|_| w.pop(|_| true).unwrap().tenant.to_string())
            .collect();
        let a = first.iter().filter(|t| *t == "a").count();
        assert!((9..=11).contains(&a), "{first:?}");
    }

    #[test]
    fn drained_jobs_leave_the_count_right() {
        let mut w = Waiting::default();
        w.push(job("a", 1), 1);
        w.push(job("a", 2), 1);
        w.push(job("b", 3), 1);
        let gone = w.drain_where(|j| j.tokens.len() >= 2);
        assert_eq!(gone.len(), 2);
        assert_eq!(w.len(), 1);
        assert_eq!(w.pop(|_| true).unwrap().tokens.len(), 1);
        assert!(w.pop(|_| true).is_none());
    }

    #[test]
    fn a_tenant_at_its_cap_is_passed_over() {
        let mut w = Waiting::default();
        w.push(job("a", 1), 1);
        w.push(job("b", 500), 1);
        assert_eq!(&*w.pop(|t| t != "a").unwrap().tenant, "b");
        assert!(w.pop(|t| t != "a").is_none());
        assert_eq!(w.len(), 1);
    }
}
