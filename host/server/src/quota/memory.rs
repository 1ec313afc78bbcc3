//! The in-memory store: exact and fast on one machine. Limits live in sharded maps; a check
//! locks the shards of its keys in a fixed order, decides all, then charges all or nothing.
//!
//! Memory is bounded: an entry whose TAT has passed is equivalent to no entry and is dropped by
//! a sweep (on insert into a full shard, and every few seconds); a shard still full after that
//! gives up its entry nearest to expiry, which costs the least accuracy.
//!
//! Usage totals (requests, tokens, compute time per tenant and key) live in the same shards, so
//! settling a request locks only the shards of its own keys: no lock is shared by every request.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::gcra;
use super::{Check, CheckKind, Debit, UsageTotals};

/// Shards of the maps; a set of them fits one `u64` bitmask ([`MemoryStore::lock`]).
const SHARDS: usize = 64;
const _: () = assert!(SHARDS <= u64::BITS as usize);

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
    epoch: Instant,
}

#[derive(Default)]
struct Shard {
    /// GCRA theoretical arrival times, in seconds since `epoch`.
    tats: HashMap<Box<str>, f64>,
    /// Requests in flight per concurrency key.
    held: HashMap<Box<str>, u32>,
    /// Usage totals per account (`<prefix>:usage:tenant:<id>`, `<prefix>:usage:key:<id>`).
    usage: HashMap<Box<str>, UsageTotals>,
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
        let mut index: Vec<usize> = keys.map(|k| self.shard_of(k)).collect();
        let wanted = index.iter().fold(0u64, |set, &s| set | 1u64 << s);
        let mut guards = Vec::with_capacity(wanted.count_ones() as usize);
        let mut left = wanted;
        while left != 0 {
            let shard = left.trailing_zeros() as usize;
            guards.push(self.shards[shard].lock().unwrap_or_else(|p| p.into_inner()));
            left &= left - 1;
        }
        // A key's guard is its shard's rank among the locked ones.
        for i in &mut index {
            *i = (wanted & ((1u64 << *i) - 1)).count_ones() as usize;
        }
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

    /// Charges `debits` and adds `usage` to its accounts, locking only their shards.
    pub fn debit(&self, debits: &[Debit], usage: Option<(&[String], UsageTotals)>) {
        let now = self.now();
        let accounts = usage.as_ref().map_or(&[][..], |(accounts, _)| *accounts);
        let keys = debits.iter().map(|d| d.key.as_str());
        let (mut guards, index) = self.lock(keys.chain(accounts.iter().map(String::as_str)));
        let (debit_guards, account_guards) = index.split_at(debits.len());
        for (d, &g) in debits.iter().zip(debit_guards) {
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
        if let Some((_, used)) = usage {
            for (account, &g) in accounts.iter().zip(account_guards) {
                let totals = &mut guards[g].usage;
                match totals.get_mut(account.as_str()) {
                    Some(total) => total.add(&used),
                    None => totals
                        .entry(account.as_str().into())
                        .or_default()
                        .add(&used),
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
        let shard = self.shards[self.shard_of(account)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        shard.usage.get(account).copied().unwrap_or_default()
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

    /// Usage totals add up per account, whichever shards the accounts fall in, from several
    /// threads at once, alongside the debits of the same call; sweeps never drop them.
    #[test]
    fn usage_totals_add_up_per_account_across_shards_and_threads() {
        let store = std::sync::Arc::new(MemoryStore::new(1000));
        let accounts: Vec<String> = (0..40).map(|i| format!("p:usage:key:k{i}")).collect();
        let used = UsageTotals {
            requests: 1,
            tokens_in: 3,
            tokens_out: 5,
            compute_seconds: 0.5,
        };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (store, accounts) = (store.clone(), accounts.clone());
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        let debit = Debit {
                            key: "budget".into(),
                            amount: 1e9,
                            period: 60.0,
                            cost: 1.0,
                        };
                        store.debit(&[debit], Some((&accounts, used)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        store.sweep();
        for account in &accounts {
            let total = store.usage(account);
            assert_eq!(
                (total.requests, total.tokens_in, total.tokens_out),
                (1000, 3000, 5000),
                "{account}"
            );
            assert!((total.compute_seconds - 500.0).abs() < 1e-9);
        }
        assert_eq!(store.usage("p:usage:key:nobody"), UsageTotals::default());
    }
}
