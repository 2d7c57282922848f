//! `coffer-mongo-standin`: runs the MongoDB stand-in server until killed.
//!
//! ```text
//! coffer-mongo-standin --port P [--replset rs0] [--user db:name:password:role@db,...]
//!     [--tls-cert F --tls-key F] [--load DIR] [--oplog-max-entries N] [--compressors snappy]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use coffer_mongo_standin::{Options, Standin, User};

const USAGE: &str = "usage: coffer-mongo-standin [--port P] [--replset NAME] [--user db:name:password:role@db,...]... \
[--tls-cert FILE --tls-key FILE] [--load DUMP_DIR] [--oplog-max-entries N] [--compressors snappy,noop]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coffer-mongo-standin: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut options = Options::default();
    let (mut cert, mut key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--port" => options.port = value("--port")?.parse().map_err(|e| format!("--port: {e}"))?,
            "--replset" => options.replset = Some(value("--replset")?),
            "--user" => options.users.push(User::parse(&value("--user")?)?),
            "--tls-cert" => cert = Some(PathBuf::from(value("--tls-cert")?)),
            "--tls-key" => key = Some(PathBuf::from(value("--tls-key")?)),
            "--load" => options.load_dump = Some(PathBuf::from(value("--load")?)),
            "--oplog-max-entries" => {
                options.oplog_max_entries =
                    Some(value("--oplog-max-entries")?.parse().map_err(|e| format!("--oplog-max-entries: {e}"))?)
            }
            "--compressors" => {
                options.compressors =
                    value("--compressors")?.split(',').filter(|s| !s.is_empty()).map(String::from).collect()
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    options.tls = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    let standin = Standin::start(options).map_err(|e| format!("cannot start: {e}"))?;
    println!("listening on 127.0.0.1:{}", standin.port());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}
