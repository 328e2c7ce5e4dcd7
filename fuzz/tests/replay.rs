//! The CI smoke: every target over every file of its committed corpus
//! (`corpus/<target>/`), without AFL. A panic names the target and the file.
//!
//! `FUZZ_REPLAY_DIR=<dir> cargo test -- <target>` replays another directory instead
//! (e.g. an AFL output queue or crashes directory).

use std::path::PathBuf;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = std::env::var_os("FUZZ_REPLAY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("corpus")
                .join(target)
        });
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    for p in &files {
        let data = std::fs::read(p).unwrap();
        if let Err(e) = std::panic::catch_unwind(|| f(&data)) {
            let msg = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("?");
            panic!("target {target}: {} failed: {msg}", p.display());
        }
    }
    println!("{target}: {} inputs from {} ok", files.len(), dir.display());
}

#[test]
fn wire() {
    replay("wire", xdpmesh_fuzz::wire);
}

#[test]
fn tables() {
    replay("tables", xdpmesh_fuzz::tables);
}

#[test]
fn connect() {
    replay("connect", xdpmesh_fuzz::connect);
}

#[test]
fn manifest() {
    replay("manifest", xdpmesh_fuzz::manifest);
}

#[test]
fn config() {
    replay("config", xdpmesh_fuzz::config);
}
