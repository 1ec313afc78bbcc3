//! Logs: where the host's log lines go and in what shape. One event is one line on stderr,
//! either text (coloured only on a terminal, never with `NO_COLOR`) or JSON
//! (`INFERGATE_LOG_FORMAT=json`), filtered by `INFERGATE_LOG`.
//!
//! Much of what gets logged comes from outside the host: what plugins log through `host.log`,
//! their error messages, names in their traps. In text logs every field is escaped as it is
//! written (control characters, line and paragraph separators), so no value can end its line
//! and start one that looks like the host's; JSON strings are escaped by JSON itself.

use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::fmt::format::{self, Writer};

/// The filter when `INFERGATE_LOG` is unset.
const DEFAULT_FILTER: &str = "info,wasmtime=warn,cranelift=warn,llama-cpp-2=warn";

/// The shape of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    /// `INFERGATE_LOG_FORMAT`: `text` (the default) or `json`.
    pub fn from_env() -> anyhow::Result<Format> {
        match std::env::var("INFERGATE_LOG_FORMAT") {
            Err(std::env::VarError::NotPresent) => Ok(Format::Text),
            Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("text") => Ok(Format::Text),
            Ok(v) if v.eq_ignore_ascii_case("json") => Ok(Format::Json),
            Ok(v) => anyhow::bail!("INFERGATE_LOG_FORMAT is `{v}`: it takes `text` or `json`"),
            Err(e) => anyhow::bail!("INFERGATE_LOG_FORMAT: {e}"),
        }
    }
}

/// Installs the process's subscriber: the log lines, and the trace exporter when one is
/// configured ([`super::trace`]). Log lines never show the exported spans.
pub fn init(format: Format) -> anyhow::Result<()> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = EnvFilter::try_from_env("INFERGATE_LOG")
        .unwrap_or_else(|_| DEFAULT_FILTER.into())
        .add_directive(format!("{}=off", super::trace::TARGET).parse()?);
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        Format::Json => lines.json().flatten_event(false).boxed(),
        Format::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            lines.with_ansi(colour).fmt_fields(escaped_fields()).boxed()
        }
    };
    let registry = tracing_subscriber::registry().with(lines.with_filter(filter));
    // Without an exporter there is no trace layer at all: an absent `Option` layer counts as
    // interested in every span, so the request's spans (auth, admission, plugin) would be
    // made and kept in the registry on every request for nobody.
    match super::trace::layer()? {
        Some(trace) => registry.with(trace).try_init()?,
        None => registry.try_init()?,
    }
    Ok(())
}

/// Text fields as `name=value`, the message bare, each escaped.
fn escaped_fields() -> impl for<'w> format::FormatFields<'w> + Send + Sync + 'static {
    format::debug_fn(
        |w: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn fmt::Debug| {
            if field.name() != "message" {
                write!(w, "{}=", field.name())?;
            }
            write!(Escape(w), "{value:?}")
        },
    )
    .delimited(" ")
}

/// Writes through to `W`, with every character that could break or restyle a line escaped
/// (`\n`, `\r`, `\u{1b}`, ...).
pub struct Escape<W>(pub W);

impl<W: fmt::Write> fmt::Write for Escape<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(breaks_lines) {
            let c = rest[i..].chars().next().expect("found at i");
            self.0.write_str(&rest[..i])?;
            write!(self.0, "{}", c.escape_default())?;
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// Control characters (line feeds, carriage returns, escape sequences, C1 controls such as
/// NEL) and the Unicode line and paragraph separators.
fn breaks_lines(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        write!(Escape(&mut out), "{s}").unwrap();
        out
    }

    #[test]
    fn a_value_cannot_start_a_line_or_restyle_one() {
        assert_eq!(escaped("plain text, é ✓"), "plain text, é ✓");
        assert_eq!(
            escaped("ok\n2026-01-01T00:00:00Z  INFO infergate: forged\r"),
            "ok\\n2026-01-01T00:00:00Z  INFO infergate: forged\\r"
        );
        assert_eq!(escaped("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(
            escaped("a\u{85}b\u{2028}c\u{2029}"),
            "a\\u{85}b\\u{2028}c\\u{2029}"
        );
        assert_eq!(escaped("tab\there"), "tab\\there");
    }
}
