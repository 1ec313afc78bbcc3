//! The in-memory store: exact and fast on one machine. Limits live in sharded maps; a check
//! locks the shards of its keys in a fixed order, decides all, then charges all or nothing.
//!
//! Memory is bounded: an entry whose TAT has passed is equivalent to no entry and is dropped by
//! a sweep (on insert into a full shard, and every few seconds); a shard still full after that
//! gives up its entry nearest to expiry, which costs the least accuracy.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::gcra;
use super::{Check, CheckKind, Debit, UsageTotals};

const SHARDS: usize = 64;

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
    epoch: Instant,
    usage: Mutex<HashMap<String, UsageTotals>>,
}

#[derive(Default)]
struct Shard {
    /// GCRA theoretical arrival times, in seconds since `epoch`.
    tats: HashMap<Box<str>, f64>,
    /// Requests in flight per concurrency key.
    held: HashMap<Box<str>, u32>,
}

impl Shard {
    /// Drops entries that no longer hold anything back.
    fn sweep(&mut self, now: f64) {
        self.tats.retain(|_, tat| *tat > now);
    }

    fn make_room(&mut self, now: f64, capacity: usize) {
        if self.tats.len() < capacity {
            return;
        }
        self.sweep(now);
        if self.tats.len() >= capacity
            && let Some(key) = self
                .tats
                .iter()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, _)| k.clone())
        {
            self.tats.remove(&key);
        }
    }
}

impl MemoryStore {
    /// A store holding at most about `max_entries` limit states.
    pub fn new(max_entries: usize) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            per_shard: max_entries.div_ceil(SHARDS).max(1),
            epoch: Instant::now(),
            usage: Mutex::default(),
        }
    }

    /// Seconds on this store's clock; starts at 1 so that 0 means "never seen".
    fn now(&self) -> f64 {
        1.0 + self.epoch.elapsed().as_secs_f64()
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    /// Locks the shards of `keys` in ascending order (so checks never deadlock); returns the
    /// guards and, for each key, the index of its guard.
    fn lock<'a, 'k>(
        &'a self,
        keys: impl Iterator<Item = &'k str>,
    ) -> (Vec<MutexGuard<'a, Shard>>, Vec<usize>) {
        let wanted: Vec<usize> = keys.map(|k| self.shard_of(k)).collect();
        let mut order = wanted.clone();
        order.sort_unstable();
        order.dedup();
        let guards = order
            .iter()
            .map(|&i| self.shards[i].lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let index = wanted
            .iter()
            .map(|s| order.binary_search(s).expect("locked"))
            .collect();
        (guards, index)
    }

    pub fn check(&self, checks: &[Check]) -> Vec<gcra::Decision> {
        let now = self.now();
        let (mut guards, index) = self.lock(checks.iter().map(|c| c.key.as_str()));
        let mut decisions = Vec::with_capacity(checks.len());
        let mut charges = Vec::with_capacity(checks.len());
        for (check, &g) in checks.iter().zip(&index) {
            let shard = &guards[g];
            let (decision, charge) = match check.kind {
                CheckKind::Charge {
                    amount,
                    period,
                    cost,
                } => {
                    let tat = shard.tats.get(check.key.as_str()).copied().unwrap_or(0.0);
                    let (d, new_tat) = gcra::decide(tat, now, cost, amount, period);
                    (d, d.allowed.then_some(Some(new_tat)))
                }
                CheckKind::Peek {
                    amount,
                    period,
                    cost,
                } => {
                    let tat = shard.tats.get(check.key.as_str()).copied().unwrap_or(0.0);
                    (gcra::decide(tat, now, cost, amount, period).0, None)
                }
                CheckKind::Acquire { cap, .. } => {
                    let held = shard.held.get(check.key.as_str()).copied().unwrap_or(0);
                    let allowed = held < cap;
                    let d = gcra::Decision {
                        allowed,
                        remaining: f64::from(cap.saturating_sub(held + u32::from(allowed))),
                        reset: 0.0,
                        retry_after: if allowed { 0.0 } else { 1.0 },
                    };
                    (d, allowed.then_some(None))
                }
            };
            decisions.push(decision);
            charges.push(charge);
        }
        if decisions.iter().all(|d| d.allowed) {
            for ((check, &g), charge) in checks.iter().zip(&index).zip(charges) {
                let shard = &mut guards[g];
                match charge {
                    Some(Some(tat)) => {
                        if let Some(stored) = shard.tats.get_mut(check.key.as_str()) {
                            *stored = tat;
                        } else {
                            shard.make_room(now, self.per_shard);
                            shard.tats.insert(check.key.as_str().into(), tat);
                        }
                    }
                    Some(None) => match shard.held.get_mut(check.key.as_str()) {
                        Some(held) => *held += 1,
                        None => {
                            shard.held.insert(check.key.as_str().into(), 1);
                        }
                    },
                    None => {}
                }
            }
        }
        decisions
    }

    pub fn debit(&self, debits: &[Debit], usage: Option<(&[String], UsageTotals)>) {
        let now = self.now();
        let (mut guards, index) = self.lock(debits.iter().map(|d| d.key.as_str()));
        for (d, &g) in debits.iter().zip(&index) {
            let shard = &mut guards[g];
            // A key seen before is updated in place: no key is allocated per request.
            if let Some(tat) = shard.tats.get_mut(d.key.as_str()) {
                *tat = gcra::debit(*tat, now, d.cost, d.amount, d.period);
            } else {
                shard.make_room(now, self.per_shard);
                let new_tat = gcra::debit(0.0, now, d.cost, d.amount, d.period);
                shard.tats.insert(d.key.as_str().into(), new_tat);
            }
        }
        drop(guards);
        if let Some((accounts, used)) = usage {
            let mut totals = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            for account in accounts {
                match totals.get_mut(account.as_str()) {
                    Some(total) => total.add(&used),
                    None => totals.entry(account.clone()).or_default().add(&used),
                }
            }
        }
    }

    pub fn release(&self, keys: &[String]) {
        let (mut guards, index) = self.lock(keys.iter().map(String::as_str));
        for (key, &g) in keys.iter().zip(&index) {
            let held = &mut guards[g].held;
            if let Some(n) = held.get_mut(key.as_str()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.remove(key.as_str());
                }
            }
        }
    }

    pub fn usage(&self, account: &str) -> UsageTotals {
        let totals = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        totals.get(account).copied().unwrap_or_default()
    }

    /// Drops every entry that no longer limits anything.
    pub fn sweep(&self) {
        let now = self.now();
        for shard in self.shards.iter() {
            shard.lock().unwrap_or_else(|p| p.into_inner()).sweep(now);
        }
    }

    /// Limit states held, for tests and metrics.
    pub fn entries(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).tats.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(key: &str, amount: f64, period: f64) -> Check {
        Check {
            key: key.to_string(),
            kind: CheckKind::Charge {
                amount,
                period,
                cost: 1.0,
            },
        }
    }

    #[test]
    fn all_or_nothing_across_limits() {
        let store = MemoryStore::new(1000);
        // a: 2 per minute, b: 3 per minute. Both pass twice; the third is refused by `a`, and
        // `b` is not charged for it, so b alone still has one left.
        for _ in 0..2 {
            assert!(
                store
                    .check(&[charge("a", 2.0, 60.0), charge("b", 3.0, 60.0)])
                    .iter()
                    .all(|d| d.allowed)
            );
        }
        let d = store.check(&[charge("a", 2.0, 60.0), charge("b", 3.0, 60.0)]);
        assert!(!d[0].allowed && d[1].allowed);
        assert!(store.check(&[charge("b", 3.0, 60.0)])[0].allowed);
        assert!(!store.check(&[charge("b", 3.0, 60.0)])[0].allowed);
    }

    #[test]
    fn memory_is_bounded_and_idle_entries_go() {
        let store = MemoryStore::new(SHARDS * 4);
        for i in 0..10_000 {
            store.check(&[charge(&format!("k{i}"), 10.0, 60.0)]);
        }
        assert!(store.entries() <= SHARDS * 4, "{}", store.entries());
        // Entries for a 1 ms period are idle almost at once; a sweep drops them.
        let store = MemoryStore::new(10_000);
        for i in 0..100 {
            store.check(&[charge(&format!("k{i}"), 1.0, 0.001)]);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.sweep();
        assert_eq!(store.entries(), 0);
    }

    #[test]
    fn concurrency_is_held_until_released() {
        let store = MemoryStore::new(100);
        let acquire = Check {
            key: "c".into(),
            kind: CheckKind::Acquire {
                cap: 2,
                lease: 60.0,
            },
        };
        assert!(store.check(std::slice::from_ref(&acquire))[0].allowed);
        assert!(store.check(std::slice::from_ref(&acquire))[0].allowed);
        assert!(!store.check(std::slice::from_ref(&acquire))[0].allowed);
        store.release(&["c".to_string()]);
        assert!(store.check(std::slice::from_ref(&acquire))[0].allowed);
    }
}
