//! Compiles `src/bpf/divert.bpf.c` into `$OUT_DIR/divert.bpf.o` with clang
//! (through libbpf-cargo, which adds `-g -O2 -target bpf`, the vendored libbpf
//! headers for `<bpf/bpf_helpers.h>` and `-D__TARGET_ARCH_*`).
//!
//! Only the object is built, no skeleton: the generated skeleton is full of
//! `unsafe` blocks, and this workspace denies `unsafe_code`. The library embeds
//! the object with `include_bytes!` and opens it with
//! `libbpf_rs::ObjectBuilder::open_memory`, which is a safe API.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/divert.bpf.c";

fn main() -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR is not set")?);
    let obj = out_dir.join("divert.bpf.o");

    let mut args: Vec<String> = vec!["-Wall".into(), "-Wextra".into(), "-Werror".into()];
    // `-target bpf` drops the host's multiarch include directory, where
    // <linux/types.h> finds <asm/types.h> on Debian-style systems.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    if Path::new(&multiarch).is_dir() {
        args.push(format!("-I{multiarch}"));
    }

    let mut builder = SkeletonBuilder::new();
    builder.source(SRC).obj(&obj).clang_args(&args);
    if let Some(clang) = env::var_os("CLANG") {
        builder.clang(clang);
    }
    builder
        .build()
        .with_context(|| format!("compiling {SRC} with clang (set CLANG to pick another one)"))?;

    println!("cargo:rerun-if-changed=src/bpf");
    println!("cargo:rerun-if-env-changed=CLANG");
    Ok(())
}
