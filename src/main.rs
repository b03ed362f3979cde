fn main() -> std::process::ExitCode {
    recipe::cli::main()
}
