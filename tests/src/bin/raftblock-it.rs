//! The `raftblock` program built inside the test package, so integration
//! tests find it through `CARGO_BIN_EXE_raftblock-it` without a nested
//! `cargo build`. Same code as the real binary: it only calls the library.

fn main() {
    std::process::exit(raftblock::main_exit_code());
}
