use clap::Parser as _;

fn main() -> std::process::ExitCode {
    shop::cli::main(shop::cli::Cli::parse())
}
