//! Turns `vocab.txt` into a `static` table of (token, id) sorted by token and a `static` hash
//! index over it, so the plugins using this crate look tokens up with no parsing or index
//! building at run time (every request gets a fresh instance).

use std::fmt::Write;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=vocab.txt");
    let vocab =
        std::fs::read_to_string("vocab.txt").expect("plugins/embedding/vocab.txt is readable");
    let mut out = String::from("/// (token, id) from `vocab.txt`, sorted by token.\n");
    out.push_str("static VOCAB: &[(&str, u32)] = &[\n");
    let table = wordpiece::sorted_table(&vocab);
    for (token, id) in &table {
        // `{:?}` of a str is a valid Rust string literal.
        writeln!(out, "    ({token:?}, {id}),").expect("writing to a String");
    }
    out.push_str("];\n");
    out.push_str("/// `wordpiece::hash_index(VOCAB)`.\n");
    out.push_str("static VOCAB_INDEX: &[u32] = &[\n");
    for slots in wordpiece::hash_index(&table).chunks(16) {
        let line: Vec<String> = slots.iter().map(u32::to_string).collect();
        writeln!(out, "    {},", line.join(", ")).expect("writing to a String");
    }
    out.push_str("];\n");
    let dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(dir.join("vocab.rs"), out).expect("OUT_DIR is writable");
}
