//! AFL++ entry point of the `tables` target (see `xdpmesh_fuzz::tables`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        xdpmesh_fuzz::tables(data);
    });
}
