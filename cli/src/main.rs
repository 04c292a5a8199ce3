//! The `isotest` binary: parse arguments, set up logging, hand over to the library.

fn main() -> std::process::ExitCode {
    isotest::main()
}
