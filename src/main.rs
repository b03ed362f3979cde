fn main() -> std::process::ExitCode {
    // Die quietly on a closed pipe (`recipe plan ... | head`), as command-line tools do, instead of
    // panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any other code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    recipe::cli::main()
}
