//! The one wasmtime [`Engine`] of a host, its epoch ticker and its compiled-component cache.
//!
//! The engine uses the pooling allocator (instantiation in tens of microseconds, so a fresh
//! store per request is cheap) and epoch interruption (a background thread ticks every
//! [`EPOCH_TICK`]; [`crate::limits`] checks the CPU budget and yields on each tick).
//! Compiled components are cached on disk by content hash and engine fingerprint, so a restart
//! with unchanged plugins skips Cranelift entirely.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::state::PluginState;

/// How often the epoch advances: the granularity of CPU limits and cooperative yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The largest linear memory any plugin may be configured with.
pub const MAX_MEMORY_BYTES: usize = 1 << 30;

/// Of each linear memory, how much stays resident between instances (reset with memset).
const KEEP_RESIDENT_BYTES: usize = 16 << 20;

/// Engine-wide settings, validated before anything is compiled.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Plugin instances that may exist at once across all plugins (pool slots).
    pub max_instances: u32,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_instances: 1000,
        }
    }
}

/// The engine, the linker with every host interface, and the compile cache.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<PluginState>,
    cache_dir: Option<PathBuf>,
    _ticker: EpochTicker,
}

impl Runtime {
    pub fn new(options: &RuntimeOptions) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        let instances = options.max_instances.max(1);
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(8))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(8))
            .max_memory_size(MAX_MEMORY_BYTES)
            // A fresh instance per request: reset the pages a request dirtied with memset
            // (found with the PAGEMAP_SCAN ioctl on Linux 6.7+) instead of madvise, which
            // would shoot down TLBs on every core and fault the same pages in again next
            // time. Beyond these sizes, memory is still given back to the OS.
            //
            // Decommits are not batched (wasmtime's default batch of one): within these sizes
            // an instance leaves wasmtime nothing but empty regions to decommit, which a batch of
            // one skips without a system call, and its slots go back to the pool at once. A batch
            // of 16 made one `process_madvise` of 16 empty regions every 5 noop requests and
            // kept the slots out of use until then; it served noop about 2% slower
            // (bench/RESULTS.md).
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES / 16);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .parallel_compilation(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)
            .map_err(|e| anyhow::anyhow!("creating the wasmtime engine: {e}"))?;

        let mut linker = Linker::new(&engine);
        let wasm_err = |what: &str, e: wasmtime::Error| anyhow::anyhow!("linking {what}: {e}");
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| wasm_err("wasi", e))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| wasm_err("wasi:http", e))?;
        crate::nn_host::add_to_linker(&mut linker).map_err(|e| wasm_err("wasi:nn", e))?;
        crate::host_api::add_to_linker(&mut linker)
            .map_err(|e| wasm_err("infergate:plugin/host", e))?;
        crate::llm_host::add_to_linker(&mut linker)
            .map_err(|e| wasm_err("infergate:plugin/llm", e))?;
        crate::variables::add_to_linker(&mut linker)
            .map_err(|e| wasm_err("wasi:config/store", e))?;

        if let Some(dir) = &options.cache_dir {
            crate::private_dir::ensure(dir, "compile cache")?;
            tracing::info!(dir = %dir.display(), "compile cache");
        }
        let ticker = EpochTicker::start(engine.clone());
        Ok(Self {
            engine,
            linker,
            cache_dir: options.cache_dir.clone(),
            _ticker: ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a component, or loads it from the cache. Blocking: call it off the async runtime.
    pub fn compile(&self, wasm: &[u8]) -> anyhow::Result<(Component, CacheOutcome)> {
        let digest = hex::encode(Sha256::digest(wasm));
        let Some(dir) = &self.cache_dir else {
            return Ok((self.compile_fresh(wasm)?, CacheOutcome::Disabled));
        };
        let path = dir.join(format!("{digest}-{:016x}.cwasm", self.fingerprint()));
        if path.exists() {
            // SAFETY: the cache directory is the operator's, written only by this function
            // with `Component::serialize` output of an engine with the same fingerprint.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unreadable cache entry: {e}")
                }
            }
        }
        let component = self.compile_fresh(wasm)?;
        if let Err(e) = write_atomically(&path, &component) {
            tracing::warn!(path = %path.display(), "could not write compile cache: {e:#}");
        }
        Ok((component, CacheOutcome::Miss))
    }

    pub(crate) fn compile_fresh(&self, wasm: &[u8]) -> anyhow::Result<Component> {
        Component::new(&self.engine, wasm).map_err(|e| {
            // One line: wasmtime's alternate form spreads byte arrays over many lines.
            let detail = format!("{e:#}")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            anyhow::anyhow!("not a valid WebAssembly component: {detail}")
        })
    }

    fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        h.finish()
    }
}

/// Whether [`Runtime::compile`] used the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    Disabled,
}

fn write_atomically(path: &Path, component: &Component) -> anyhow::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("serialising: {e}"))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch ticker thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
