//! The `ferry` binary: parses the command line, loads the settings, sets up logging as they say
//! and hands over to [`ferry::app`].

use clap::Parser;
use ferry::{config::Settings, telemetry::LogFormat};

fn main() -> std::process::ExitCode {
    let cli = ferry::cli::Cli::parse();
    // Client commands read their own settings (server, key), never the server's.
    if let ferry::cli::Command::Client(command) = cli.command {
        return ferry::client_cli::run(command);
    }
    // Before logging is set up (its format is a setting): a bad configuration is printed as is.
    let settings = match Settings::load(&cli) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("ferry: {err:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let log_format = settings.log_format;
    let telemetry = ferry::telemetry::init(log_format, &settings.traces);
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
    let outcome = runtime.block_on(ferry::app::run(cli.command, settings));
    // Outside the runtime: the exporter's client blocks.
    telemetry.shutdown();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // In JSON mode every stderr line stays a JSON object, this last one included.
            match log_format {
                LogFormat::Json => {
                    tracing::error!(error = %format_args!("{err:#}"), "ferry stopped")
                }
                LogFormat::Text => eprintln!("ferry: {err:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}
