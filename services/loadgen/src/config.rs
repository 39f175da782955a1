//! Command-line options.

use std::time::Duration;

pub const HELP: &str = "\
loadgen — drive the stockmesh HTTP API like shop traffic

USAGE: loadgen [OPTIONS]
       loadgen --smoke [--smoke-timeout SECS] [target and admin options]

Target and setup:
  --base-url URL          API base URL (default http://127.0.0.1:8080; an Ingress works too);
                          LOADGEN_{USER,PRODUCT,INVENTORY,ORDER,NOTIFICATION}_URL override it
                          per service (inventory's is used by --smoke only, for /readyz)
  --admin-email EMAIL     first admin (default $STOCKMESH_ADMIN_EMAIL or admin@stockmesh.local)
  --admin-password PASS   (default $STOCKMESH_ADMIN_PASSWORD or stockmesh-admin)
  --users N               shoppers to register (default 20)
  --products N            products to create (default 5)
  --stock N               initial stock per product (default 1000000)

Traffic:
  --mode mixed|orders|logins
                          mixed: browse:order weights (default 10:1); orders: order-only;
                          logins: every request logs a shopper in (password hashing throughput)
  --mix B:O               browse:order weights for mixed mode (default 10:1)
  --concurrency N         closed loop: N workers back to back (default 16)
  --rate R                open loop: R requests per second instead (ignores --concurrency)
  --duration SECS         how long to run (default 10)
  --requests N            stop after N requests instead
  --lag-every K           sample notification lag on every K-th order (default 10; 0 = off)

Smoke test (what `helm test` runs):
  --smoke                 instead of load: /readyz of every service with its own URL, admin
                          login, a product with stock, a fresh shopper, one order, until the
                          order is CONFIRMED, its notification listed and the stock down by
                          the quantity; then the product and shopper are deleted. One line per
                          step (`ok   ...` or `FAIL ...: reason`); exit 0 only if all pass
  --smoke-timeout SECS    how long to wait for the order's confirmation, notification and
                          stock (default 60)

Output:
  --json PATH             also write the JSON report to PATH
  --quiet                 no progress line
  -h, --help              this text
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Mixed {
        browse: u32,
        order: u32,
    },
    OrdersOnly,
    /// Every request is a shopper's login: the cost of password checks.
    Logins,
}

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
    pub json: Option<String>,
    pub quiet: bool,
    /// `--smoke`: one end-to-end pass instead of load.
    pub smoke: bool,
    pub smoke_timeout: Duration,
}

fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, String> {
    *i += 1;
    args.get(*i)
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn number<T: std::str::FromStr>(text: &str, flag: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag}: {text:?} is not a valid number"))
}

impl Options {
    /// Parses arguments; `Ok(None)` means help was printed.
    pub fn parse(args: &[String]) -> Result<Option<Self>, String> {
        let mut o = Options {
            base_url: "http://127.0.0.1:8080".into(),
            admin_email: std::env::var("STOCKMESH_ADMIN_EMAIL")
                .unwrap_or_else(|_| "admin@stockmesh.local".into()),
            admin_password: std::env::var("STOCKMESH_ADMIN_PASSWORD")
                .unwrap_or_else(|_| "stockmesh-admin".into()),
            users: 20,
            products: 5,
            stock: 1_000_000,
            mode: Mode::Mixed {
                browse: 10,
                order: 1,
            },
            concurrency: 16,
            rate: None,
            duration: Duration::from_secs(10),
            requests: None,
            lag_every: 10,
            json: None,
            quiet: false,
            smoke: false,
            smoke_timeout: Duration::from_secs(60),
        };
        let mut mix = (10, 1);
        let mut only = None;
        let mut i = 0;
        while i < args.len() {
            let flag = args[i].as_str();
            match flag {
                "-h" | "--help" => {
                    print!("{HELP}");
                    return Ok(None);
                }
                "--base-url" => {
                    o.base_url = value(args, &mut i, flag)?.trim_end_matches('/').to_owned()
                }
                "--admin-email" => o.admin_email = value(args, &mut i, flag)?.to_owned(),
                "--admin-password" => o.admin_password = value(args, &mut i, flag)?.to_owned(),
                "--users" => o.users = number(value(args, &mut i, flag)?, flag)?,
                "--products" => o.products = number(value(args, &mut i, flag)?, flag)?,
                "--stock" => o.stock = number(value(args, &mut i, flag)?, flag)?,
                "--mode" => match value(args, &mut i, flag)? {
                    "mixed" => only = None,
                    "orders" | "order-only" => only = Some(Mode::OrdersOnly),
                    "logins" => only = Some(Mode::Logins),
                    other => {
                        return Err(format!(
                            "--mode: expected mixed, orders or logins, got {other:?}"
                        ));
                    }
                },
                "--mix" => {
                    let text = value(args, &mut i, flag)?;
                    let (b, r) = text
                        .split_once(':')
                        .ok_or("--mix: expected B:O, e.g. 10:1")?;
                    mix = (number(b, flag)?, number(r, flag)?);
                }
                "--concurrency" => o.concurrency = number(value(args, &mut i, flag)?, flag)?,
                "--rate" => o.rate = Some(number(value(args, &mut i, flag)?, flag)?),
                "--duration" => {
                    o.duration = Duration::from_secs_f64(number(value(args, &mut i, flag)?, flag)?)
                }
                "--requests" => o.requests = Some(number(value(args, &mut i, flag)?, flag)?),
                "--lag-every" => o.lag_every = number(value(args, &mut i, flag)?, flag)?,
                "--json" => o.json = Some(value(args, &mut i, flag)?.to_owned()),
                "--quiet" => o.quiet = true,
                "--smoke" => o.smoke = true,
                "--smoke-timeout" => {
                    let secs: f64 = number(value(args, &mut i, flag)?, flag)?;
                    if !(secs > 0.0 && secs <= 3600.0) {
                        return Err("--smoke-timeout must be between 0 and 3600 seconds".into());
                    }
                    o.smoke_timeout = Duration::from_secs_f64(secs);
                }
                other => return Err(format!("unknown option {other:?} (see --help)")),
            }
            i += 1;
        }
        o.mode = only.unwrap_or(Mode::Mixed {
            browse: mix.0,
            order: mix.1,
        });
        if o.users == 0 || o.products == 0 || o.concurrency == 0 {
            return Err("--users, --products and --concurrency must be at least 1".into());
        }
        if let Mode::Mixed { browse, order } = o.mode
            && browse + order == 0
        {
            return Err("--mix weights must not both be 0".into());
        }
        if o.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return Err("--rate must be positive".into());
        }
        Ok(Some(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        Options::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
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
        .unwrap()
        .unwrap();
        assert_eq!(o.mode, Mode::OrdersOnly);
        assert_eq!((o.concurrency, o.requests), (4, Some(100)));
        let o = parse(&["--mix", "5:2", "--rate", "50"]).unwrap().unwrap();
        assert_eq!(
            o.mode,
            Mode::Mixed {
                browse: 5,
                order: 2
            }
        );
        assert_eq!(o.rate, Some(50.0));
        let o = parse(&["--mode", "logins"]).unwrap().unwrap();
        assert_eq!(o.mode, Mode::Logins);
        assert!(parse(&["--mode", "browse"]).is_err());
        assert!(parse(&["--concurrency", "0"]).is_err());
        assert!(parse(&["--mix", "0:0"]).is_err());
        assert!(parse(&["--rate", "-1"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--users"]).is_err());
    }

    #[test]
    fn parses_smoke_mode() {
        let o = parse(&[]).unwrap().unwrap();
        assert!(!o.smoke);
        assert_eq!(o.smoke_timeout, Duration::from_secs(60));
        let o = parse(&[
            "--smoke",
            "--smoke-timeout",
            "7.5",
            "--admin-password",
            "pw",
        ])
        .unwrap()
        .unwrap();
        assert!(o.smoke);
        assert_eq!(o.smoke_timeout, Duration::from_millis(7500));
        assert_eq!(o.admin_password, "pw");
        assert!(parse(&["--smoke-timeout", "0"]).is_err());
        assert!(parse(&["--smoke-timeout", "soon"]).is_err());
        assert!(parse(&["--smoke-timeout"]).is_err());
    }
}
