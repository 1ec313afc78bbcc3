//! The names plugins are registered under: the one rule for every plugin name (from the
//! runtime, where manifests are checked too) and the namespace of tenant plugins,
//! `{tenant}--{name}`, which bounds tenant ids and tenant plugin names alike.

pub use infergate_runtime::manifest::{PLUGIN_NAME_RULE, valid_plugin_name};

/// Longest tenant id, and longest name of a tenant's plugin: together with `--` they stay a
/// valid plugin name.
const SEGMENT_MAX: usize = 30;

/// What [`valid_segment`] accepts, for error messages.
pub const SEGMENT_RULE: &str = "1-30 characters of a-z, 0-9, `-` or `_`, without `--`";

/// A tenant id, or the name a tenant gives its plugin: one half of `{tenant}--{name}`.
pub fn valid_segment(s: &str) -> bool {
    valid_plugin_name(s) && s.len() <= SEGMENT_MAX && !s.contains("--")
}

/// The registry name of tenant `tenant`'s plugin `name`, when both are valid segments.
pub fn namespaced(tenant: &str, name: &str) -> Option<String> {
    (valid_segment(tenant) && valid_segment(name)).then(|| format!("{tenant}--{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_stay_valid_plugin_names() {
        assert_eq!(namespaced("acme", "chat").as_deref(), Some("acme--chat"));
        assert!(namespaced("ac--me", "chat").is_none());
        assert!(namespaced("acme", "a--b").is_none());
        assert!(namespaced("acme", &"x".repeat(31)).is_none());
        let longest = namespaced(&"t".repeat(30), &"n".repeat(30)).unwrap();
        assert!(valid_plugin_name(&longest));
        assert!(!valid_segment("Acme") && !valid_segment(""));
    }
}
