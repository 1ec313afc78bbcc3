//! The answer to a request: a [`Refusal`] (the error and the headers to send with it), or an
//! [`Admission`], which holds the request's concurrency places until it is dropped, reserves
//! tokens before a generation ([`Admission::token_budget`]) and charges what the request used
//! when it is settled.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use infergate_runtime::{BudgetRefused, TokenBudget, Usage, UsageSink};

use super::policy::Metered;
use super::{Check, CheckKind, Debit, Store, UsageTotals};
use crate::error::ApiError;

/// A refused request: the error and the `RateLimit-*` headers to send with it.
pub struct Refusal {
    pub error: ApiError,
    pub headers: HeaderMap,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            headers: HeaderMap::new(),
        }
    }
}

/// A request let in. Its concurrency places are given back when it is dropped; [`settle`]
/// charges what the request used.
///
/// [`settle`]: Admission::settle
pub struct Admission {
    pub(super) store: Arc<Store>,
    /// Who holds the request's concurrency places in Redis (its request id); empty in memory.
    pub(super) member: String,
    pub(super) leases: Vec<String>,
    pub(super) debits: Vec<(Metered, Debit)>,
    pub(super) accounts: Vec<String>,
    /// `RateLimit-*` headers for the response.
    pub headers: HeaderMap,
}

impl Admission {
    /// Whether settling must finish before the response is sent for the next request to see
    /// it: true when a budget of tokens or compute time applies.
    pub fn has_budgets(&self) -> bool {
        !self.debits.is_empty()
    }

    /// A budget the runtime charges before each generation, when a token budget applies: it
    /// takes prompt plus `max_tokens` from every token budget of the request at once (all or
    /// nothing), so an answer that could overdraw a budget is refused before decoding.
    /// [`Admission::settle`] then charges the difference to what was really used.
    pub fn token_budget(&self) -> Option<Arc<dyn TokenBudget>> {
        let limits: Vec<Debit> = self
            .debits
            .iter()
            .filter(|(metered, _)| *metered == Metered::Tokens)
            .map(|(_, d)| d.clone())
            .collect();
        if limits.is_empty() {
            return None;
        }
        Some(Arc::new(TokenReservations {
            store: self.store.clone(),
            limits,
            member: self.member.clone(),
        }))
    }

    /// Charges `usage` to the request's budgets and usage accounts, then says so on `done`.
    /// In memory that happens at once; with Redis, on a task of its own. Tokens reserved before
    /// generating were charged then: only the difference is (a negative one gives back).
    fn settle(mut self, usage: Usage, done: tokio::sync::oneshot::Sender<()>) {
        let debits: Vec<Debit> = std::mem::take(&mut self.debits)
            .into_iter()
            .filter_map(|(metered, mut d)| {
                d.cost = match metered {
                    Metered::Tokens => {
                        (usage.tokens_in + usage.tokens_out) as f64 - usage.tokens_reserved as f64
                    }
                    Metered::ComputeSeconds => usage.compute_seconds,
                    Metered::Requests => return None,
                };
                (d.cost != 0.0).then_some(d)
            })
            .collect();
        let accounts = std::mem::take(&mut self.accounts);
        let totals = UsageTotals {
            requests: 1,
            tokens_in: usage.tokens_in,
            tokens_out: usage.tokens_out,
            compute_seconds: usage.compute_seconds,
        };
        match &*self.store {
            Store::Memory(m) => {
                m.debit(&debits, Some((&accounts, totals)));
                drop(self);
                let _ = done.send(());
            }
            Store::Redis(_) => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let store = self.store.clone();
                runtime.spawn(async move {
                    if let Err(e) = store.debit(&debits, Some((&accounts, totals))).await {
                        tracing::warn!("usage not recorded: {e}");
                    }
                    drop(self);
                    let _ = done.send(());
                });
            }
        }
    }

    /// A sink for the plugin runtime, which calls it with the request's usage once the plugin
    /// instance is gone; the receiver says when the usage is charged.
    pub fn into_sink(self) -> (UsageSink, tokio::sync::oneshot::Receiver<()>) {
        let (done, receiver) = tokio::sync::oneshot::channel();
        let sink: UsageSink = Box::new(move |usage| self.settle(usage, done));
        (sink, receiver)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.leases.is_empty() {
            return;
        }
        let leases = std::mem::take(&mut self.leases);
        match &*self.store {
            Store::Memory(m) => m.release(&leases),
            Store::Redis(_) => {
                let store = self.store.clone();
                let member = std::mem::take(&mut self.member);
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        if let Store::Redis(r) = &*store
                            && let Err(e) = r.release(&leases, &member).await
                        {
                            tracing::warn!("concurrency places not released (they expire): {e}");
                        }
                    });
                }
            }
        }
    }
}

/// The token budgets of one request, charged before a generation (see
/// [`Admission::token_budget`]).
struct TokenReservations {
    store: Arc<Store>,
    limits: Vec<Debit>,
    member: String,
}

impl TokenBudget for TokenReservations {
    fn reserve(
        &self,
        tokens: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BudgetRefused>> + Send + '_>>
    {
        Box::pin(async move {
            let checks: Vec<Check> = self
                .limits
                .iter()
                .map(|d| Check {
                    key: d.key.clone(),
                    kind: CheckKind::Charge {
                        amount: d.amount,
                        period: d.period,
                        cost: tokens as f64,
                    },
                })
                .collect();
            let decisions = match self.store.check(&checks, &self.member).await {
                Ok(decisions) => decisions,
                Err(e) => {
                    // The request was let in by the same store's policy; keep to what it said.
                    tracing::warn!("token budget not checked before generating: {e}");
                    return Ok(());
                }
            };
            match decisions
                .iter()
                .zip(&self.limits)
                .filter(|(d, _)| !d.allowed)
                .max_by(|a, b| a.0.retry_after.total_cmp(&b.0.retry_after))
            {
                None => Ok(()),
                Some((decision, limit)) => Err(BudgetRefused {
                    message: format!(
                        "token quota {}/{}s: this generation needs up to {tokens} tokens (prompt plus max_tokens), {} are left",
                        limit.amount, limit.period, decision.remaining
                    ),
                    retry_after: Duration::from_secs_f64(decision.retry_after.max(0.0)),
                }),
            }
        })
    }
}
