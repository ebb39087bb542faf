//! The power-cut filesystem built inside the test package (as
//! `raftblock-it` is), so the power-loss tests find it next to their
//! executables without a nested `cargo build`.

fn main() -> anyhow::Result<()> {
    raftblock_powercut::cli::main()
}
