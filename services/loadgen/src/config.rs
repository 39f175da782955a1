//! Command line of `loadgen` (clap derive: generated `--help`, and every
//! option also read from an environment variable, so that the chart's Jobs
//! and the scripts can set them either way). The flag names and their
//! meaning are those of the earlier hand-written parser: `scripts/bench.sh`,
//! `scripts/api-fuzz.sh`, the chart's `helm test` pod and load Job and the
//! e2e smoke test pass them.

use std::ffi::OsString;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, ValueEnum};

const AFTER_HELP: &str = "\
Per-service URLs: LOADGEN_{USER,PRODUCT,INVENTORY,ORDER,NOTIFICATION}_URL
override --base-url for that service (what the chart's pods set: each API
prefix has its own Service inside the cluster); inventory's is used by
--smoke only, for /readyz.

Exit codes: 0 every request (or smoke step) succeeded, 1 some failed,
2 bad arguments or the run could not start.

Examples:
    loadgen --base-url http://shop.example.com --duration 30 --concurrency 32
    loadgen --mode orders --rate 50 --duration 60 --json report.json
    loadgen --mode live --rate 50 --notification-url http://n1:8085,http://n2:8085
    loadgen --mode idle-streams --streams 1000 --users 63 --hold 10
    loadgen --smoke --smoke-timeout 60";

const SETUP: &str = "Target and setup";
const TRAFFIC: &str = "Traffic";
const SMOKE: &str = "Smoke test (what `helm test` runs)";
const OUTPUT: &str = "Output";

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    /// Browse and order by the --mix weights.
    Mixed,
    /// Orders only.
    #[value(alias = "order-only")]
    Orders,
    /// Every request logs a shopper in (password hashing throughput).
    Logins,
    /// Orders, each shopper holding one live notification stream (SSE):
    /// time from each order's 201 to its `notification` event.
    Live,
    /// No orders: open --streams idle notification streams, hold them for
    /// --hold seconds, report how many got `ready` and stayed open.
    IdleStreams,
}

/// loadgen — drive the stockmesh HTTP API like shop traffic, or (--smoke)
/// check every service end to end once.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    version,
    after_help = AFTER_HELP,
    // A flag given twice takes its last value, as the hand-written parser did.
    args_override_self = true
)]
struct Cli {
    /// API base URL (an Ingress works too).
    #[arg(
        long,
        env = "LOADGEN_BASE_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL",
        help_heading = SETUP
    )]
    base_url: String,

    /// The first admin's email.
    #[arg(
        long,
        env = "STOCKMESH_ADMIN_EMAIL",
        default_value = "admin@stockmesh.local",
        value_name = "EMAIL",
        help_heading = SETUP
    )]
    admin_email: String,

    /// The first admin's password.
    #[arg(
        long,
        env = "STOCKMESH_ADMIN_PASSWORD",
        default_value = "stockmesh-admin",
        // `--help` must not print the password the environment holds.
        hide_env_values = true,
        value_name = "PASS",
        help_heading = SETUP
    )]
    admin_password: String,

    /// Shoppers to register.
    #[arg(long, env = "LOADGEN_USERS", default_value_t = 20, value_name = "N",
          value_parser = at_least_one, help_heading = SETUP)]
    users: usize,

    /// Products to create.
    #[arg(long, env = "LOADGEN_PRODUCTS", default_value_t = 5, value_name = "N",
          value_parser = at_least_one, help_heading = SETUP)]
    products: usize,

    /// Initial stock per product.
    #[arg(long, env = "LOADGEN_STOCK", default_value_t = 1_000_000, value_name = "N",
          value_parser = clap::value_parser!(i64).range(0..), help_heading = SETUP)]
    stock: i64,

    /// What each request does.
    #[arg(long, env = "LOADGEN_MODE", value_enum, default_value_t = ModeArg::Mixed,
          value_name = "MODE", help_heading = TRAFFIC)]
    mode: ModeArg,

    /// Browse:order weights for mixed mode.
    #[arg(long, env = "LOADGEN_MIX", default_value = "10:1", value_name = "B:O",
          value_parser = parse_mix, help_heading = TRAFFIC)]
    mix: (u32, u32),

    /// Closed loop: N workers back to back.
    #[arg(long, env = "LOADGEN_CONCURRENCY", default_value_t = 16, value_name = "N",
          value_parser = at_least_one, help_heading = TRAFFIC)]
    concurrency: usize,

    /// Open loop: R requests per second instead (ignores --concurrency).
    #[arg(long, env = "LOADGEN_RATE", value_name = "R", value_parser = positive_rate,
          help_heading = TRAFFIC)]
    rate: Option<f64>,

    /// How long to run, in seconds.
    #[arg(long, env = "LOADGEN_DURATION", default_value = "10", value_name = "SECS",
          value_parser = seconds, help_heading = TRAFFIC)]
    duration: Duration,

    /// Stop after N requests instead of after --duration.
    #[arg(long, env = "LOADGEN_REQUESTS", value_name = "N", help_heading = TRAFFIC)]
    requests: Option<u64>,

    /// Sample notification lag on every K-th order (0: off).
    #[arg(long, env = "LOADGEN_LAG_EVERY", default_value_t = 10, value_name = "K",
          help_heading = TRAFFIC)]
    lag_every: u64,

    /// Notification base URLs the live streams connect to, round-robin
    /// (repeat the flag or separate by commas; default: the notification
    /// service's URL). Used by --mode live and --mode idle-streams.
    #[arg(long = "notification-url", env = "LOADGEN_STREAM_URLS", value_name = "URL",
          value_delimiter = ',', action = clap::ArgAction::Append, help_heading = TRAFFIC)]
    notification_urls: Vec<String>,

    /// --mode idle-streams: how many streams to open (spread over the
    /// shoppers, so --users × the per-user limit must cover it).
    #[arg(long, env = "LOADGEN_STREAMS", default_value_t = 1000, value_name = "N",
          value_parser = at_least_one, help_heading = TRAFFIC)]
    streams: usize,

    /// --mode idle-streams: how long to hold the streams open, in seconds.
    #[arg(long, env = "LOADGEN_HOLD", default_value = "5", value_name = "SECS",
          value_parser = seconds, help_heading = TRAFFIC)]
    hold: Duration,

    /// --mode live: an order's event not on its stream within SECS is missing.
    #[arg(long, env = "LOADGEN_LIVE_TIMEOUT", default_value = "10", value_name = "SECS",
          value_parser = smoke_timeout, help_heading = TRAFFIC)]
    live_timeout: Duration,

    /// Instead of load: /readyz of every service with its own URL, admin
    /// login, a product with stock, a fresh shopper, one order, until the
    /// order is CONFIRMED, its notification listed and the stock down by the
    /// quantity; then the product and shopper are deleted. One line per step
    /// (`ok   ...` or `FAIL ...: reason`); exit 0 only if all pass.
    #[arg(long, env = "LOADGEN_SMOKE", help_heading = SMOKE)]
    smoke: bool,

    /// How long --smoke waits for the order's confirmation, notification and
    /// stock, in seconds (at most 3600).
    #[arg(long, env = "LOADGEN_SMOKE_TIMEOUT", default_value = "60", value_name = "SECS",
          value_parser = smoke_timeout, help_heading = SMOKE)]
    smoke_timeout: Duration,

    /// Also write the JSON report to PATH.
    #[arg(long, env = "LOADGEN_JSON", value_name = "PATH", help_heading = OUTPUT)]
    json: Option<String>,

    /// No progress line.
    #[arg(long, env = "LOADGEN_QUIET", help_heading = OUTPUT)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Mixed {
        browse: u32,
        order: u32,
    },
    OrdersOnly,
    /// Every request is a shopper's login: the cost of password checks.
    Logins,
    /// Orders only, measured to their event on live streams.
    Live,
    /// Idle live streams held open, no requests.
    IdleStreams,
}

/// The resolved options the run uses.
#[derive(Debug, Clone)]
pub struct Options {
    pub base_url: String,
    pub admin_email: String,
    pub admin_password: String,
    pub users: usize,
    pub products: usize,
    pub stock: i64,
    pub mode: Mode,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub lag_every: u64,
    /// Notification base URLs for live streams (empty: the service's URL).
    pub notification_urls: Vec<String>,
    pub streams: usize,
    pub hold: Duration,
    pub live_timeout: Duration,
    pub json: Option<String>,
    pub quiet: bool,
    /// `--smoke`: one end-to-end pass instead of load.
    pub smoke: bool,
    pub smoke_timeout: Duration,
}

/// A count of at least 1 (`--users`, `--products`, `--concurrency`).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

/// `--mix B:O`, e.g. `10:1`.
fn parse_mix(text: &str) -> Result<(u32, u32), String> {
    let (b, o) = text
        .split_once(':')
        .ok_or_else(|| "expected B:O, e.g. 10:1".to_owned())?;
    let weight = |w: &str| {
        w.trim()
            .parse::<u32>()
            .map_err(|_| format!("{w:?} is not a whole number (expected B:O, e.g. 10:1)"))
    };
    Ok((weight(b)?, weight(o)?))
}

/// `--rate`: a positive, finite number of requests per second.
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        Ok(_) => Err("must be positive".into()),
        Err(_) => Err(format!("{text:?} is not a number")),
    }
}

/// Seconds, fractions allowed (`--duration 0.5`); never negative, never so
/// large that a `Duration` cannot hold it (`from_secs_f64` would panic).
fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} is not a number of seconds"))
}

/// `--smoke-timeout`: more than 0, at most an hour.
fn smoke_timeout(text: &str) -> Result<Duration, String> {
    let timeout = seconds(text)?;
    if timeout.is_zero() || timeout > Duration::from_secs(3600) {
        Err("must be between 0 and 3600 seconds".into())
    } else {
        Ok(timeout)
    }
}

impl Options {
    /// Parses a command line (program name first). `--help`, `--version`
    /// and mistakes come back as a `clap::Error` whose `exit()` prints them
    /// and exits 0 or 2.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        let mode = match cli.mode {
            ModeArg::Mixed => {
                let (browse, order) = cli.mix;
                if browse == 0 && order == 0 {
                    return Err(Cli::command().error(
                        ErrorKind::ValueValidation,
                        "--mix weights must not both be 0",
                    ));
                }
                Mode::Mixed { browse, order }
            }
            ModeArg::Orders => Mode::OrdersOnly,
            ModeArg::Logins => Mode::Logins,
            ModeArg::Live => Mode::Live,
            ModeArg::IdleStreams => Mode::IdleStreams,
        };
        Ok(Options {
            base_url: cli.base_url.trim_end_matches('/').to_owned(),
            admin_email: cli.admin_email,
            admin_password: cli.admin_password,
            users: cli.users,
            products: cli.products,
            stock: cli.stock,
            mode,
            concurrency: cli.concurrency,
            rate: cli.rate,
            duration: cli.duration,
            requests: cli.requests,
            lag_every: cli.lag_every,
            notification_urls: cli
                .notification_urls
                .iter()
                .map(|url| url.trim().trim_end_matches('/').to_owned())
                .filter(|url| !url.is_empty())
                .collect(),
            streams: cli.streams,
            hold: cli.hold,
            live_timeout: cli.live_timeout,
            json: cli.json,
            quiet: cli.quiet,
            smoke: cli.smoke,
            smoke_timeout: cli.smoke_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_and_validates() {
        let o = parse(&[
            "--mode",
            "orders",
            "--concurrency",
            "4",
            "--requests",
            "100",
        ])
        .expect("valid");
        assert_eq!(o.mode, Mode::OrdersOnly);
        assert_eq!((o.concurrency, o.requests), (4, Some(100)));
        let o = parse(&["--mix", "5:2", "--rate", "50"]).expect("valid");
        assert_eq!(
            o.mode,
            Mode::Mixed {
                browse: 5,
                order: 2
            }
        );
        assert_eq!(o.rate, Some(50.0));
        let o = parse(&["--mode", "logins"]).expect("valid");
        assert_eq!(o.mode, Mode::Logins);
        // The old spelling of orders-only still works.
        assert_eq!(
            parse(&["--mode", "order-only"]).expect("valid").mode,
            Mode::OrdersOnly
        );
        // Orders-only ignores the mix, as before.
        assert_eq!(
            parse(&["--mode", "orders", "--mix", "0:0"])
                .expect("valid")
                .mode,
            Mode::OrdersOnly
        );
        for bad in [
            &["--mode", "browse"][..],
            &["--concurrency", "0"],
            &["--users", "0"],
            &["--products", "0"],
            &["--mix", "0:0"],
            &["--mix", "10"],
            &["--rate", "-1"],
            &["--rate", "NaN"],
            &["--duration", "-1"],
            &["--duration", "120s"],
            &["--bogus"],
            &["--users"],
        ] {
            let err = parse(bad).expect_err("refused");
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn defaults_and_both_flag_forms() {
        let o = parse(&[]).expect("defaults");
        assert_eq!(o.users, 20);
        assert_eq!(o.products, 5);
        assert_eq!(o.stock, 1_000_000);
        assert_eq!(
            o.mode,
            Mode::Mixed {
                browse: 10,
                order: 1
            }
        );
        assert_eq!(o.concurrency, 16);
        assert_eq!(o.rate, None);
        assert_eq!(o.duration, Duration::from_secs(10));
        assert_eq!(o.lag_every, 10);
        assert!(!o.quiet && o.json.is_none());
        let o = parse(&[
            "--base-url=http://shop.example.com/",
            "--duration=0.5",
            "--json",
            "/tmp/r.json",
            "--quiet",
            "--concurrency",
            "2",
            "--concurrency",
            "3",
        ])
        .expect("valid");
        assert_eq!(o.base_url, "http://shop.example.com", "trailing / trimmed");
        assert_eq!(o.duration, Duration::from_millis(500));
        assert_eq!(o.json.as_deref(), Some("/tmp/r.json"));
        assert!(o.quiet);
        assert_eq!(o.concurrency, 3, "the last value wins");
    }

    #[test]
    fn parses_live_modes() {
        let o = parse(&[]).expect("defaults");
        assert!(o.notification_urls.is_empty());
        assert_eq!((o.streams, o.hold), (1000, Duration::from_secs(5)));
        assert_eq!(o.live_timeout, Duration::from_secs(10));
        let o = parse(&[
            "--mode",
            "live",
            "--notification-url",
            "http://a:1/",
            "--notification-url",
            "http://b:2,http://c:3",
            "--live-timeout",
            "2",
        ])
        .expect("valid");
        assert_eq!(o.mode, Mode::Live);
        assert_eq!(
            o.notification_urls,
            ["http://a:1", "http://b:2", "http://c:3"],
            "repeated and comma-separated, trailing / trimmed"
        );
        assert_eq!(o.live_timeout, Duration::from_secs(2));
        let o =
            parse(&["--mode", "idle-streams", "--streams", "7", "--hold", "0.5"]).expect("valid");
        assert_eq!(o.mode, Mode::IdleStreams);
        assert_eq!((o.streams, o.hold), (7, Duration::from_millis(500)));
        assert!(parse(&["--streams", "0"]).is_err());
        assert!(parse(&["--live-timeout", "0"]).is_err());
    }

    #[test]
    fn parses_smoke_mode() {
        let o = parse(&[]).expect("defaults");
        assert!(!o.smoke);
        assert_eq!(o.smoke_timeout, Duration::from_secs(60));
        let o = parse(&[
            "--smoke",
            "--smoke-timeout",
            "7.5",
            "--admin-password",
            "pw",
        ])
        .expect("valid");
        assert!(o.smoke);
        assert_eq!(o.smoke_timeout, Duration::from_millis(7500));
        assert_eq!(o.admin_password, "pw");
        assert!(parse(&["--smoke-timeout", "0"]).is_err());
        assert!(parse(&["--smoke-timeout", "3601"]).is_err());
        assert!(parse(&["--smoke-timeout", "soon"]).is_err());
        assert!(parse(&["--smoke-timeout"]).is_err());
    }
}
