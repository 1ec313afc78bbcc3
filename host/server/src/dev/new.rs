//! `infergate new`: a plugin project that builds and passes its test, in Rust, Python or
//! JavaScript. The templates live beside this file (`templates/{rust,python,js}/`) and are
//! compiled into the binary; the SDKs and `wit/` are used in place from the infergate checkout
//! (`INFERGATE_HOME`), so a project always builds against the host it targets.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// A plugin language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// One file of a template: its path in the project, and its text with `{{name}}`, `{{crate}}`
/// and `{{home}}` still to fill in.
type File = (&'static str, &'static str);

const RUST: &[File] = &[
    ("Cargo.toml", include_str!("templates/rust/Cargo.toml.tmpl")),
    // The versions infergate's own plugins build with.
    ("Cargo.lock", include_str!("../../../../plugins/Cargo.lock")),
    ("src/lib.rs", include_str!("templates/rust/src/lib.rs")),
    ("README.md", include_str!("templates/rust/README.md")),
    (".gitignore", include_str!("templates/rust/gitignore")),
];

const PYTHON: &[File] = &[
    ("app.py", include_str!("templates/python/app.py")),
    ("test_app.py", include_str!("templates/python/test_app.py")),
    ("Makefile", include_str!("templates/python/Makefile")),
    ("README.md", include_str!("templates/python/README.md")),
    (".gitignore", include_str!("templates/python/gitignore")),
];

const JS: &[File] = &[
    ("app.js", include_str!("templates/js/app.js")),
    ("app.test.js", include_str!("templates/js/app.test.js")),
    ("Makefile", include_str!("templates/js/Makefile")),
    ("README.md", include_str!("templates/js/README.md")),
    (".gitignore", include_str!("templates/js/gitignore")),
];

/// Writes a new plugin called `name` into `dir` (default `./name`), which must not exist or be
/// empty; returns the directory.
pub fn scaffold(
    name: &str,
    lang: Lang,
    dir: Option<PathBuf>,
    home: &Path,
) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        infergate_runtime::manifest::valid_plugin_name(name),
        "`{name}` is not a plugin name: use {}",
        infergate_runtime::manifest::PLUGIN_NAME_RULE
    );
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        anyhow::ensure!(empty, "{} exists and is not empty", dir.display());
    }
    let home = std::path::absolute(home).unwrap_or_else(|_| home.to_path_buf());
    let files = match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Js => JS,
    };
    for (path, text) in files {
        let text = text
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{home}}", &home.display().to_string());
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

/// What to run next, for the person who asked.
pub fn next_steps(name: &str, lang: Lang, dir: &Path) -> String {
    let (test, build, wasm) = match lang {
        Lang::Rust => (
            "cargo test",
            "cargo build --release --target wasm32-wasip2",
            format!(
                "target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            ),
        ),
        Lang::Python | Lang::Js => ("make test", "make", format!("{name}.wasm")),
    };
    format!(
        "created {dir}\n\n  cd {dir}\n  {test}\n  {build}\n  infergate check {wasm}\n  \
         infergate deploy {wasm} --name {name} --to http://127.0.0.1:8080\n",
        dir = dir.display()
    )
}
