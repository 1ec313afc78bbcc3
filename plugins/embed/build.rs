//! Turns `vocab.txt` into a `static` table of (token, id) sorted by token, so the plugin looks
//! tokens up by binary search with no parsing at run time (every request gets a fresh instance).

use std::fmt::Write;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=vocab.txt");
    let vocab = std::fs::read_to_string("vocab.txt").expect("plugins/embed/vocab.txt is readable");
    let mut out = String::from("/// (token, id) from `vocab.txt`, sorted by token.\n");
    out.push_str("static VOCAB: &[(&str, u32)] = &[\n");
    for (token, id) in wordpiece::sorted_table(&vocab) {
        // `{:?}` of a str is a valid Rust string literal.
        writeln!(out, "    ({token:?}, {id}),").expect("writing to a String");
    }
    out.push_str("];\n");
    let dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(dir.join("vocab.rs"), out).expect("OUT_DIR is writable");
}
