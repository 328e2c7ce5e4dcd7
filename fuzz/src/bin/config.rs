//! AFL++ entry point of the `config` target (see `xdpmesh_fuzz::config`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        xdpmesh_fuzz::config(data);
    });
}
