//! What the host keeps on disk: the compile cache (loaded back as native code) and the auth
//! database are private to the host's user, wherever they fall back to.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{API_KEY, wasm};

/// Runs `infergate serve` on `config` with no HOME or XDG directories and `tmp` as the
/// temporary directory, until it is ready (`Ok(log)`) or exits (`Err(log)`).
fn serve(config: &Path, tmp: &Path) -> Result<String, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .env_remove("HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_DATA_HOME")
        .env("TMPDIR", tmp)
        .env("INFERGATE_API_KEY", API_KEY)
        .env("INFERGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut log = String::new();
    let outcome = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains(" ready") && line.ends_with("ready") {
                    break Ok(());
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break Err(()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "not ready:\n{log}"
                );
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    outcome.map(|()| log.clone()).map_err(|()| log)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_compile_cache_and_the_auth_database_are_private_to_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = conf.join("infergate.toml");
    std::fs::write(
        &config,
        format!(
            "[[plugins]]\nname = \"hello\"\npath = \"{}\"\n",
            wasm("hello")
        ),
    )
    .unwrap();

    // Without HOME or XDG_CACHE_HOME the cache falls back to the temporary directory, under a
    // name of this user's own, created 0700; the start-up log says where.
    let log = serve(&config, &tmp).unwrap_or_else(|log| panic!("did not start:\n{log}"));
    let me = std::fs::metadata(dir.path()).unwrap().uid();
    let cache = tmp.join(format!("infergate-{me}"));
    assert_eq!(mode(&cache), 0o700, "{}", cache.display());
    assert!(
        std::fs::read_dir(&cache).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".cwasm")),
        "nothing cached in {}",
        cache.display()
    );
    assert!(log.contains(&cache.display().to_string()), "{log}");
    // The database beside the config is the user's only.
    assert_eq!(mode(&conf.join("infergate.db")), 0o600);
    assert!(
        log.contains(&conf.join("infergate.db").display().to_string()),
        "{log}"
    );

    // A cache directory that others may write to is refused, not loaded from.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let log = serve(&config, &tmp).expect_err("started on a cache others may write");
    assert!(log.contains("others may write to it"), "{log}");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();

    // So is a database directory that others may write to.
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o777)).unwrap();
    let log = serve(&config, &tmp).expect_err("started on a database others may write");
    assert!(log.contains("others may write to it"), "{log}");
}
