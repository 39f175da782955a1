//! Cross-site request forgery defence for the browser session.
//!
//! Browsers authenticate with the HttpOnly session cookie, which they attach
//! to requests other sites make them send. Two layers stop those:
//! the cookie is `SameSite=Lax` (not sent on cross-site POST, PUT, PATCH or
//! DELETE by current browsers), and every state-changing request is checked
//! here: a request whose `Origin` is not this site (or one of
//! `ALLOWED_ORIGINS`), or, without `Origin`, whose `Sec-Fetch-Site` says it
//! came from another site, is refused with 403 before any handler runs.
//! Requests that carry neither header do not come from a current browser
//! (curl, services, SDKs with bearer tokens) and pass: they cannot be
//! forged by a web page.
//!
//! "This site" is the request's `Host` (the Ingress and the local gateway
//! pass the client's `Host` through).

use axum::http::{HeaderMap, Method, header};

use crate::error::{ApiError, ErrorKind};

/// Origins (`scheme://host[:port]`) allowed besides the request's own host,
/// for a console served from another host than the API.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    /// Parses `ALLOWED_ORIGINS`: comma-separated `scheme://host[:port]`.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut origins = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let valid = split_origin(item).is_some() && !item.ends_with('/');
            if !valid {
                return Err(format!(
                    "{item:?} is not an origin (expected scheme://host[:port], no path)"
                ));
            }
            origins.push(item.to_ascii_lowercase());
        }
        Ok(Self(origins))
    }

    fn contains(&self, origin: &str) -> bool {
        self.0
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }
}

/// `(scheme, host, port)` of `scheme://host[:port]`, the port defaulted.
fn split_origin(origin: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = split_host(rest)?;
    Some((scheme, host, port.unwrap_or(default_port)))
}

/// `(host, port)` of `host[:port]` or `[v6][:port]`, lowercased.
fn split_host(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (format!("[{v6}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port.parse().ok()?)),
            None => (authority.to_owned(), None),
        }
    };
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(ErrorKind::Forbidden, message).with_code("cross_site_request")
}

/// Refuses a state-changing request another site made a browser send.
pub fn check(
    method: &Method,
    headers: &HeaderMap,
    allowed: &AllowedOrigins,
) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").trim();
        if allowed.contains(origin) || same_host(origin, headers) {
            return Ok(());
        }
        return Err(forbidden(format!(
            "cross-site request refused: Origin {origin:?} is not this site"
        )));
    }
    match headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        None | Some("same-origin") | Some("none") => Ok(()),
        Some(other) => Err(forbidden(format!(
            "cross-site request refused: Sec-Fetch-Site is {other}"
        ))),
    }
}

/// Whether `origin` names the host the request was sent to. A `Host`
/// without a port (a proxy that drops it) matches any port of that host.
fn same_host(origin: &str, headers: &HeaderMap) -> bool {
    let Some((_, origin_host, origin_port)) = split_origin(origin) else {
        return false;
    };
    let Some((host, port)) = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| split_host(h.trim()))
    else {
        return false;
    };
    host == origin_host && port.is_none_or(|port| port == origin_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn allowed(list: &str) -> AllowedOrigins {
        AllowedOrigins::parse(list).expect("valid list")
    }

    #[test]
    fn reads_are_never_checked() {
        let evil = headers(&[("origin", "https://evil.example"), ("host", "shop.example")]);
        assert!(check(&Method::GET, &evil, &allowed("")).is_ok());
    }

    #[test]
    fn a_write_from_this_site_passes() {
        for h in [
            headers(&[("origin", "https://shop.example"), ("host", "shop.example")]),
            headers(&[
                ("origin", "http://127.0.0.1:8080"),
                ("host", "127.0.0.1:8080"),
            ]),
            headers(&[("origin", "http://127.0.0.1:8080"), ("host", "127.0.0.1")]),
            headers(&[
                ("origin", "https://SHOP.example:443"),
                ("host", "shop.example:443"),
            ]),
            headers(&[("origin", "http://[::1]:8080"), ("host", "[::1]:8080")]),
            headers(&[("sec-fetch-site", "same-origin")]),
            headers(&[]),
        ] {
            assert!(check(&Method::POST, &h, &allowed("")).is_ok(), "{h:?}");
        }
    }

    #[test]
    fn a_write_from_another_site_is_refused_with_a_clear_message() {
        for h in [
            headers(&[("origin", "https://evil.example"), ("host", "shop.example")]),
            headers(&[
                ("origin", "http://127.0.0.1:9999"),
                ("host", "127.0.0.1:8080"),
            ]),
            headers(&[("origin", "null"), ("host", "shop.example")]),
            headers(&[
                ("origin", "https://shop.example.evil"),
                ("host", "shop.example"),
            ]),
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site")]),
        ] {
            let err = check(&Method::DELETE, &h, &allowed("")).expect_err("refused");
            let response = axum::response::IntoResponse::into_response(err);
            assert_eq!(
                response.status(),
                axum::http::StatusCode::FORBIDDEN,
                "{h:?}"
            );
        }
    }

    #[test]
    fn allowed_origins_pass_and_malformed_ones_are_refused_at_start() {
        let list = allowed("https://console.example, http://localhost:3000");
        let h = headers(&[
            ("origin", "https://console.example"),
            ("host", "api.example"),
        ]);
        assert!(check(&Method::PUT, &h, &list).is_ok());
        let h = headers(&[("origin", "http://localhost:3001"), ("host", "api.example")]);
        assert!(check(&Method::PUT, &h, &list).is_err());
        assert!(AllowedOrigins::parse("console.example").is_err());
        assert!(AllowedOrigins::parse("https://console.example/").is_err());
        assert!(AllowedOrigins::parse("ftp://x").is_err());
    }
}
