//! AFL++ entry point of the `wire` target (see `xdpmesh_fuzz::wire`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        xdpmesh_fuzz::wire(data);
    });
}
