//! The `shop` executable: the allocator, then the command line of [`shop::cli`].

use clap::Parser as _;

/// mimalloc rather than the system allocator: glibc keeps the 19 MiB buffer of every Argon2
/// hash in per-thread arenas (a few dozen logins left `shop up` over 300 MiB resident), and
/// mimalloc returns such blocks to the system; it is also faster for the many small
/// short-lived allocations of request and message handling. Built without transparent huge
/// pages (`no_thp`), which would add about 12 MiB to every idle program.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shop::cli::main(shop::cli::Cli::parse())
}
