//! AFL++ entry point of the `manifest` target (see `xdpmesh_fuzz::manifest`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        xdpmesh_fuzz::manifest(data);
    });
}
