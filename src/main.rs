//! The `ferry` binary: parses the command line and hands over to [`ferry::app`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = ferry::cli::Cli::parse();
    ferry::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("ferry: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ferry::app::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferry: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
