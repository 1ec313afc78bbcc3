//! Directories whose contents the host trusts later: the compile cache (its files are loaded as
//! native code) and the auth database's directory. They are created `0700`, and one that
//! belongs to another user or that others may write is refused, so nobody else on the machine
//! can plant a compiled component or a database there.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Creates `dir` (and missing parents) readable by this user only, or checks the one that is
/// there: owned by this user (or root) and writable by nobody else. `what` names it in errors.
pub fn ensure(dir: &Path, what: &str) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the {what} {}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("reading the {what} {}", dir.display()))?;
    anyhow::ensure!(
        meta.is_dir(),
        "refusing the {what} {}: it is not a directory (a link?)",
        dir.display()
    );
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    anyhow::ensure!(
        meta.uid() == me || meta.uid() == 0,
        "refusing the {what} {}: it belongs to user {}, not to this process's user {me}",
        dir.display(),
        meta.uid()
    );
    anyhow::ensure!(
        meta.mode() & 0o022 == 0,
        "refusing the {what} {}: others may write to it (mode {:o}); `chmod go-w` it",
        dir.display(),
        meta.mode() & 0o7777
    );
    Ok(())
}

/// `$XDG_<kind>_HOME/infergate`, else `$HOME/<fallback>/infergate`, else a directory of this
/// user's own in the system temporary directory (`infergate-<uid>`, never a shared name).
pub fn user_dir(xdg: &str, home_relative: &str) -> PathBuf {
    std::env::var_os(xdg)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(home_relative))
        })
        .map(|base| base.join("infergate"))
        .unwrap_or_else(|| {
            // SAFETY: as above.
            let me = unsafe { libc::geteuid() };
            std::env::temp_dir().join(format!("infergate-{me}"))
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_new_directory_is_private_and_a_shared_one_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b");
        ensure(&dir, "cache").unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Again: an existing private directory is fine.
        ensure(&dir, "cache").unwrap();

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure(&dir, "cache").unwrap_err().to_string();
        assert!(e.contains("others may write to it"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure(&dir, "cache").unwrap();

        let file = base.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(ensure(&file, "cache").is_err());
    }
}
