//! The `raftblock` binary: everything lives in the library; see `lib.rs`.

fn main() {
    std::process::exit(raftblock::main_exit_code());
}
