//! The Redis store: one limit state shared by every instance. Each check is one round trip: an
//! atomic server-side script (EVALSHA) that reads Redis's own clock, decides every limit of the
//! request and charges all of them or none. Keys expire when they stop limiting anything, so
//! Redis holds only active limits.
//!
//! The connection is re-established by itself: a failed or timed-out command drops it, and the
//! next call (at most every [`RECONNECT_EVERY`]) connects again. Until then calls fail at once,
//! and the configured failure policy decides; nothing waits longer than the timeout.
//!
//! All keys of one request go to one script, so a Redis Cluster needs them in one slot; run a
//! single primary (with replicas) for limits.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};

use super::gcra::Decision;
use super::{Check, CheckKind, Debit, UsageTotals};

/// Least time between two connection attempts while Redis is away.
pub const RECONNECT_EVERY: Duration = Duration::from_millis(250);

/// Mirrors [`super::gcra::decide`]; kinds: `c` charge, `p` peek, `a` acquire (concurrency).
/// KEYS: one per check. ARGV: member, then four per check: kind, a, b, c.
/// Returns four integers per check: allowed, remaining, reset ms, retry ms.
const CHECK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local eps = 1e-6
local member = ARGV[1]
local out, pending, all = {}, {}, true
for i, key in ipairs(KEYS) do
  local j = 2 + (i - 1) * 4
  local kind = ARGV[j]
  local allowed, remaining, reset, retry
  if kind == 'a' then
    local cap, lease = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local held = redis.call('ZCARD', key)
    allowed = held < cap
    if allowed then
      remaining = cap - held - 1
      retry = 0
      pending[i] = {'a', now + lease, lease}
    else
      remaining = 0
      retry = 1
    end
    reset = 0
  else
    local amount, period, cost = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
    local interval = period / amount
    local tat = tonumber(redis.call('GET', key) or '0')
    local base = math.max(tat, now)
    local new_tat = base + cost * interval
    if new_tat - now <= period + eps then
      allowed = true
      remaining = math.max(math.floor((period - (new_tat - now)) / interval + eps), 0)
      reset = new_tat - now
      retry = 0
      if kind == 'c' then pending[i] = {'c', new_tat} end
    else
      allowed = false
      remaining = math.max(math.floor((period - (base - now)) / interval + eps), 0)
      reset = base - now
      retry = math.max(new_tat - period - now, 0)
    end
  end
  if not allowed then all = false end
  out[#out + 1] = allowed and 1 or 0
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(reset * 1000)
  out[#out + 1] = math.ceil(retry * 1000)
end
if all then
  for i, p in pairs(pending) do
    if p[1] == 'c' then
      redis.call('SET', KEYS[i], string.format('%.17g', p[2]), 'PX', math.ceil((p[2] - now) * 1000) + 1000)
    else
      redis.call('ZADD', KEYS[i], p[2], member)
      redis.call('PEXPIRE', KEYS[i], math.ceil(p[3] * 1000) + 1000)
    end
  end
end
return out
"#;

/// Mirrors [`super::gcra::debit`], and adds usage to accounts.
/// KEYS: the debited limits, then the usage accounts. ARGV: number of limits, three per limit
/// (amount, period, cost), then tokens in, tokens out, compute seconds.
const DEBIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[1])
for i = 1, n do
  local j = 2 + (i - 1) * 3
  local amount, period, cost = tonumber(ARGV[j]), tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local new_tat = math.max(tat, now) + cost * (period / amount)
  -- A refund (negative cost) can leave the TAT in the past: the key then lives a second.
  redis.call('SET', KEYS[i], string.format('%.17g', new_tat), 'PX', math.max(math.ceil((new_tat - now) * 1000), 0) + 1000)
end
local u = 2 + n * 3
for i = n + 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'requests', 1)
  redis.call('HINCRBY', KEYS[i], 'tokens_in', ARGV[u])
  redis.call('HINCRBY', KEYS[i], 'tokens_out', ARGV[u + 1])
  redis.call('HINCRBYFLOAT', KEYS[i], 'compute_seconds', ARGV[u + 2])
end
return n
"#;

pub struct RedisStore {
    client: redis::Client,
    timeout: Duration,
    connection: Mutex<Connection>,
    /// Held while a connection is being made.
    connecting: tokio::sync::Mutex<()>,
    check: Script,
    debit: Script,
}

#[derive(Default)]
struct Connection {
    current: Option<MultiplexedConnection>,
    last_attempt: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis is unreachable (reconnecting)")]
    Unavailable,
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl RedisStore {
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<RedisStore> {
        Ok(RedisStore {
            client: redis::Client::open(url)?,
            timeout,
            connection: Mutex::default(),
            connecting: tokio::sync::Mutex::new(()),
            check: Script::new(CHECK),
            debit: Script::new(DEBIT),
        })
    }

    /// The shared connection, or a new one unless the last attempt failed too recently. Callers
    /// arriving while a connection is being made wait for that attempt (within their timeout).
    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        {
            let mut c = self.connection.lock().unwrap_or_else(|p| p.into_inner());
            if c.last_attempt
                .is_some_and(|at| at.elapsed() < RECONNECT_EVERY)
            {
                return Err(StoreError::Unavailable);
            }
            c.last_attempt = Some(Instant::now());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        tracing::info!("connected to redis for limits");
        self.connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current = Some(conn.clone());
        Ok(conn)
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .clone()
    }

    /// Connects ahead of the first request (failures are retried by requests later).
    pub async fn warm_up(&self) {
        match tokio::time::timeout(self.timeout * 10, self.connection()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("redis for limits not reachable yet: {e}"),
            Err(_) => tracing::warn!("redis for limits not reachable yet: no answer"),
        }
    }

    /// Runs `op` on the connection within the timeout; a failure drops the connection.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let result = tokio::time::timeout(self.timeout, async {
            let conn = self.connection().await?;
            op(conn).await.map_err(StoreError::from)
        })
        .await
        .unwrap_or(Err(StoreError::Timeout(self.timeout)));
        if let Err(e) = &result {
            let drop_connection = match e {
                StoreError::Timeout(_) => true,
                StoreError::Redis(e) => {
                    e.is_io_error() || e.is_connection_dropped() || e.is_timeout()
                }
                StoreError::Unavailable => false,
            };
            if drop_connection {
                self.connection
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .current = None;
            }
        }
        result
    }

    pub async fn check(&self, checks: &[Check], member: &str) -> Result<Vec<Decision>, StoreError> {
        let mut invocation = self.check.prepare_invoke();
        invocation.arg(member);
        for check in checks {
            invocation.key(&check.key);
            match check.kind {
                CheckKind::Charge {
                    amount,
                    period,
                    cost,
                } => invocation.arg("c").arg(amount).arg(period).arg(cost),
                CheckKind::Peek {
                    amount,
                    period,
                    cost,
                } => invocation.arg("p").arg(amount).arg(period).arg(cost),
                CheckKind::Acquire { cap, lease } => invocation.arg("a").arg(cap).arg(lease).arg(0),
            };
        }
        let raw: Vec<i64> = self
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| Decision {
                allowed: c[0] == 1,
                remaining: c[1] as f64,
                reset: c[2] as f64 / 1000.0,
                retry_after: c[3] as f64 / 1000.0,
            })
            .collect())
    }

    pub async fn debit(
        &self,
        debits: &[Debit],
        usage: Option<(&[String], UsageTotals)>,
    ) -> Result<(), StoreError> {
        let mut invocation = self.debit.prepare_invoke();
        invocation.arg(debits.len());
        for d in debits {
            invocation
                .key(&d.key)
                .arg(d.amount)
                .arg(d.period)
                .arg(d.cost);
        }
        match usage {
            Some((accounts, used)) => {
                for account in accounts {
                    invocation.key(account);
                }
                invocation
                    .arg(used.tokens_in)
                    .arg(used.tokens_out)
                    .arg(used.compute_seconds);
            }
            None => {
                invocation.arg(0).arg(0).arg(0);
            }
        }
        let _: i64 = self
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(())
    }

    pub async fn release(&self, keys: &[String], member: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.zrem(key, member).ignore();
        }
        self.run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    pub async fn usage(&self, account: &str) -> Result<UsageTotals, StoreError> {
        let account = account.to_string();
        let fields: std::collections::HashMap<String, String> = self
            .run(|mut conn| async move {
                redis::cmd("HGETALL")
                    .arg(&account)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let get = |k: &str| {
            fields
                .get(k)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(UsageTotals {
            requests: get("requests") as u64,
            tokens_in: get("tokens_in") as u64,
            tokens_out: get("tokens_out") as u64,
            compute_seconds: get("compute_seconds"),
        })
    }
}
