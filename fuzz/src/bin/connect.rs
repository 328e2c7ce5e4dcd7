//! AFL++ entry point of the `connect` target (see `xdpmesh_fuzz::connect`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        xdpmesh_fuzz::connect(data);
    });
}
