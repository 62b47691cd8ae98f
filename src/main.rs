//! The `entitled` command: parses the CLI and hands over to the library.
#![forbid(unsafe_code)]

/// mimalloc instead of glibc's malloc: see the comment on the dependency in `Cargo.toml`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    entitled::cli::main()
}
