//! The fair queue: a model's compute slots and, when every slot is busy, one queue of waiting
//! callers per tenant.
//!
//! A freed slot goes to the waiting tenant with the least compute used relative to its weight
//! (start-time fair queueing over measured compute seconds: a tenant's "pass" grows by each
//! compute's time divided by its weight; a tenant that was idle re-enters at the current virtual
//! time, so idleness earns no credit). One busy tenant therefore cannot starve a light one: the
//! light one waits for about one compute, not for the busy tenant's whole backlog.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::stats::Counters;

/// Who asks for a compute, for fair queueing: the tenant and its weight (priority).
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant: Arc<str>,
    /// A tenant of weight 2 gets twice the compute of a tenant of weight 1 under contention.
    pub weight: u32,
}

impl Default for Caller {
    fn default() -> Self {
        Caller {
            tenant: Arc::from(""),
            weight: 1,
        }
    }
}

/// The slots and the per-tenant queues, behind one short-held lock.
pub(super) struct Shared {
    queue: Mutex<FairQueue>,
    /// The model's counters: a freed slot charges its next holder the expected compute cost.
    counters: Arc<Counters>,
}

#[derive(Default)]
pub(super) struct FairQueue {
    /// Slots nobody holds.
    pub(super) free: usize,
    /// Virtual time: the pass of the tenant served last.
    virtual_time: f64,
    tenants: HashMap<Arc<str>, Lane>,
}

#[derive(Default)]
struct Lane {
    /// Compute seconds used, divided by the weight, in virtual time.
    pass: f64,
    /// The tenant's weight, as its latest caller gave it.
    weight: u32,
    waiters: VecDeque<oneshot::Sender<Slot>>,
}

/// A compute slot; dropping it hands it to the next waiter by fairness, or frees it.
pub(super) struct Slot {
    shared: Option<Arc<Shared>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.release();
        }
    }
}

impl FairQueue {
    /// Charges `caller` for one compute of the estimated cost (virtual seconds).
    pub(super) fn charge(&mut self, caller: &Caller, estimate: f64) {
        let vt = self.virtual_time;
        let lane = self.tenants.entry(caller.tenant.clone()).or_default();
        lane.weight = caller.weight.max(1);
        if lane.waiters.is_empty() && lane.pass < vt {
            lane.pass = vt;
        }
        lane.pass += estimate / f64::from(lane.weight);
    }

    /// Puts `caller` at the back of its tenant's lane; the receiver gets a slot when fairness
    /// gives it one.
    pub(super) fn wait(&mut self, caller: &Caller) -> oneshot::Receiver<Slot> {
        let (sender, receiver) = oneshot::channel();
        let vt = self.virtual_time;
        let lane = self.tenants.entry(caller.tenant.clone()).or_default();
        lane.weight = caller.weight.max(1);
        lane.waiters.retain(|w| !w.is_closed());
        if lane.waiters.is_empty() && lane.pass < vt {
            lane.pass = vt;
        }
        lane.waiters.push_back(sender);
        receiver
    }
}

impl Shared {
    /// `concurrency` free slots and no one waiting.
    pub(super) fn new(concurrency: usize, counters: Arc<Counters>) -> Shared {
        Shared {
            queue: Mutex::new(FairQueue {
                free: concurrency,
                ..FairQueue::default()
            }),
            counters,
        }
    }

    /// The queue, locked (briefly: no await or compute while it is held).
    pub(super) fn lock(&self) -> MutexGuard<'_, FairQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot taken from the free ones (the caller has already counted it off `free`).
    pub(super) fn slot(self: &Arc<Self>) -> Slot {
        Slot {
            shared: Some(self.clone()),
        }
    }

    /// Gives a freed slot to the waiting tenant with the lowest pass, or makes it free.
    fn release(self: &Arc<Self>) {
        let mut queue = self.lock();
        let estimate = self.counters.estimate_seconds();
        loop {
            let next = queue
                .tenants
                .iter()
                .filter(|(_, lane)| !lane.waiters.is_empty())
                .min_by(|a, b| a.1.pass.total_cmp(&b.1.pass))
                .map(|(tenant, _)| tenant.clone());
            let Some(tenant) = next else {
                queue.free += 1;
                // Forget lanes that could not matter any more: empty and not ahead of time.
                let vt = queue.virtual_time;
                queue
                    .tenants
                    .retain(|_, lane| !lane.waiters.is_empty() || lane.pass > vt);
                return;
            };
            let queue = &mut *queue;
            let lane = queue.tenants.get_mut(&tenant).expect("lane exists");
            let waiter = lane.waiters.pop_front().expect("lane has waiters");
            if waiter.is_closed() {
                continue;
            }
            match waiter.send(self.slot()) {
                Ok(()) => {
                    queue.virtual_time = lane.pass;
                    // Charge the estimate now so the next pick already sees this tenant as
                    // served; the caller settles the measured cost when its compute ends.
                    lane.pass += estimate / f64::from(lane.weight.max(1));
                    return;
                }
                // The caller gave up between the check and the send: try the next one without
                // running this slot's own release (we hold the lock).
                Err(mut slot) => {
                    slot.shared = None;
                }
            }
        }
    }

    /// Replaces the estimate charged at dispatch with the measured cost.
    pub(super) fn settle(&self, caller: &Caller, estimate: f64, actual: f64) {
        let mut queue = self.lock();
        if let Some(lane) = queue.tenants.get_mut(&caller.tenant) {
            lane.pass += (actual - estimate) / f64::from(caller.weight.max(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::schedule::Scheduler;

    /// Two tenants, both with a backlog, weights 3 and 1: the freed slots go 3:1.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_go_to_tenants_by_weight() {
        let s = Arc::new(Scheduler::new(1, 100, Duration::from_secs(60)));
        let order = Arc::new(Mutex::new(Vec::new()));
        let heavy = Caller {
            tenant: Arc::from("heavy"),
            weight: 3,
        };
        let light = Caller {
            tenant: Arc::from("light"),
            weight: 1,
        };
        let mut tasks = Vec::new();
        for i in 0..60 {
            let (s, order) = (s.clone(), order.clone());
            let caller = if i % 2 == 0 {
                heavy.clone()
            } else {
                light.clone()
            };
            tasks.push(tokio::spawn(async move {
                let tag = caller.tenant.clone();
                s.run("m", &caller, Duration::from_secs(60), false, move || {
                    std::thread::sleep(Duration::from_millis(3));
                    order.lock().unwrap().push(tag);
                    Ok(())
                })
                .await
                .unwrap();
            }));
            // Everyone is queued before the first slot frees.
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let heavy_first = order[..24].iter().filter(|t| &***t == "heavy").count();
        assert!(
            (15..=21).contains(&heavy_first),
            "heavy got {heavy_first} of the first 24 slots: {order:?}"
        );
    }

    /// One tenant's backlog does not delay another tenant's single request by more than about
    /// one compute.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newcomer_is_served_next() {
        let s = Arc::new(Scheduler::new(1, 100, Duration::from_secs(60)));
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |tenant: &'static str| {
            let (s, order) = (s.clone(), order.clone());
            tokio::spawn(async move {
                let caller = Caller {
                    tenant: Arc::from(tenant),
                    weight: 1,
                };
                s.run("m", &caller, Duration::from_secs(60), false, move || {
                    std::thread::sleep(Duration::from_millis(3));
                    order.lock().unwrap().push(tenant);
                    Ok(())
                })
                .await
                .unwrap();
            })
        };
        let mut tasks: Vec<_> = (0..20).map(|_| spawn("flood")).collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let done_before = order.lock().unwrap().len();
        tasks.push(spawn("newcomer"));
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let at = order.iter().position(|t| *t == "newcomer").unwrap();
        // FIFO would put it after the whole remaining backlog (about 16 computes).
        assert!(
            at <= done_before + 2,
            "the newcomer came {at}th, {done_before} were done when it arrived: {order:?}"
        );
    }
}
