fn main() -> std::process::ExitCode {
    leakbpf::cli::main()
}
