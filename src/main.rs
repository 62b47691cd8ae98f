//! The `entitled` command: parses the CLI and hands over to the library.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    entitled::cli::main()
}
