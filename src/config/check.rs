//! Checks of a parsed config that need no I/O: references between
//! sections, addresses, limits.

use super::errors::Checker;
use super::schema::{AdaptiveConf, AdminConf, BulkheadConf, Config, ProviderConf, RouteConf, TracingConf};

/// Semantic checks: references, addresses, limits. Nothing here reads a
/// file or builds anything: the runtime build does (and reports) that.
pub(super) fn check(c: &Config, ck: &mut Checker) {
    if c.server.listen.is_empty() {
        ck.error("server.listen", "at least one listen address is required");
    }
    for (i, l) in c.server.listen.iter().enumerate() {
        if l.parse::<std::net::SocketAddr>().is_err() {
            ck.error(
                format!("server.listen[{i}]"),
                format!("'{l}' is not an address like 0.0.0.0:8080"),
            );
        }
    }
    if c.server.max_connections == 0 {
        ck.error("server.max_connections", "must be at least 1");
    }
    if c.server.threads == 0 {
        ck.error("server.threads", "must be at least 1");
    }
    if c.server.timeouts.keepalive_idle.0.is_zero() {
        ck.error("server.timeouts.keepalive_idle", "must be above zero");
    }
    if c.server.timeouts.request_headers.0.is_zero() {
        ck.error("server.timeouts.request_headers", "must be above zero");
    }
    if c.server.timeouts.request_body.0.is_zero() {
        ck.error("server.timeouts.request_body", "must be above zero");
    }
    if c.server.timeouts.client_write.0.is_zero() {
        ck.error("server.timeouts.client_write", "must be above zero");
    }
    if let Some(t) = &c.tracing {
        check_tracing(ck, t);
    }
    if let Some(a) = &c.admin {
        check_admin(ck, a);
    }
    if c.providers.is_empty() {
        ck.error("providers", "at least one provider is required");
    }
    for (name, p) in &c.providers {
        let at = format!("providers.{name}");
        if p.models.pairs().is_empty() {
            ck.error(format!("{at}.models"), "at least one model is required");
        }
        if let Some(b) = &p.bulkhead {
            check_bulkhead(ck, &format!("{at}.bulkhead"), b);
        }
        if let Some(a) = &p.adaptive {
            let ceiling = p
                .bulkhead
                .as_ref()
                .map_or(BulkheadConf::PROVIDER_DEFAULT.max_concurrent, |b| b.max_concurrent);
            check_adaptive(ck, &format!("{at}.adaptive"), a, ceiling);
        }
        let t = &p.timeouts;
        for (field, d) in [
            ("connect", t.connect),
            ("first_token", t.first_token),
            ("stream_idle", t.stream_idle),
            ("idle", t.idle),
        ] {
            if d.0.is_zero() {
                ck.error(format!("{at}.timeouts.{field}"), "must be above zero");
            }
        }
        check_prices(ck, &at, p);
    }
    for (name, p) in &c.plugins {
        let at = format!("plugins.{name}");
        let b = p.bulkhead();
        check_bulkhead(ck, &format!("{at}.bulkhead"), &b);
        if p.type_name.is_empty() {
            ck.error(format!("{at}.type"), "the plugin type is required");
        }
    }
    let mut route_names = std::collections::HashMap::new();
    for (i, r) in c.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if let Some(first) = route_names.insert(r.name.as_str(), i) {
            ck.error(
                format!("{at}.name"),
                format!("duplicate name '{}' (also routes[{first}])", r.name),
            );
        }
        for (j, p) in r.plugins.iter().enumerate() {
            if !c.plugins.contains_key(p) {
                ck.error(format!("{at}.plugins[{j}]"), format!("unknown plugin '{p}'"));
            }
        }
        if r.providers.is_empty() {
            ck.error(format!("{at}.providers"), "at least one provider is required");
        }
        for (j, p) in r.providers.iter().enumerate() {
            if !c.providers.contains_key(p) {
                ck.error(format!("{at}.providers[{j}]"), format!("unknown provider '{p}'"));
            }
        }
        check_retry(ck, c, &at, r);
        for (j, p) in r.passthrough.iter().enumerate() {
            if !p.path_prefix.starts_with('/') {
                ck.error(
                    format!("{at}.passthrough[{j}].path_prefix"),
                    format!("path '{}' must start with '/'", p.path_prefix),
                );
            }
            for (k, m) in p.methods.iter().enumerate() {
                if http::Method::from_bytes(m.as_bytes()).is_err() {
                    ck.error(
                        format!("{at}.passthrough[{j}].methods[{k}]"),
                        format!("'{m}' is not an HTTP method"),
                    );
                }
            }
        }
        for (j, m) in r.matcher.methods.iter().enumerate() {
            if http::Method::from_bytes(m.as_bytes()).is_err() {
                ck.error(
                    format!("{at}.match.methods[{j}]"),
                    format!("'{m}' is not an HTTP method"),
                );
            }
        }
        for (j, (h, _)) in r.matcher.headers.iter().enumerate() {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                ck.error(
                    format!("{at}.match.headers"),
                    format!("'{h}' (entry {j}) is not a header name"),
                );
            }
        }
        if let Some(p) = r.matcher.path_prefix.as_ref().or(r.matcher.path.as_ref()) {
            if !p.starts_with('/') {
                ck.error(format!("{at}.match"), format!("path '{p}' must start with '/'"));
            }
        }
    }
    if c.routes.is_empty() {
        ck.error("routes", "at least one route is required");
    }
}

fn check_retry(ck: &mut Checker, c: &Config, at: &str, r: &RouteConf) {
    if r.retry.is_some() && r.retries.is_some() {
        ck.error(
            format!("{at}.retries"),
            "give either `retries` (the old form) or `retry`, not both",
        );
    }
    if let Some(p) = &r.retry {
        if p.attempts == 0 {
            ck.error(format!("{at}.retry.attempts"), "must be at least 1 (the first send)");
        }
        if p.per_provider == 0 {
            ck.error(format!("{at}.retry.per_provider"), "must be at least 1");
        }
        if p.backoff_max.0 < p.backoff_base.0 {
            ck.error(format!("{at}.retry.backoff_max"), "must not be below backoff_base");
        }
        if p.deadline.0.is_zero() {
            ck.error(format!("{at}.retry.deadline"), "must be above zero");
        }
    }
    let served = |m: &str| {
        r.providers
            .iter()
            .filter_map(|p| c.providers.get(p))
            .any(|p| p.models.pairs().iter().any(|(public, _)| public == m))
    };
    for (from, to) in &r.context_fallbacks {
        if from == to {
            ck.error(format!("{at}.context_fallbacks.{from}"), "falls back to itself");
        } else if !served(to) {
            ck.error(
                format!("{at}.context_fallbacks.{from}"),
                format!("no provider of this route serves '{to}'"),
            );
        }
    }
}

/// Prices name models the provider serves (a typo would silently make a
/// model free) and are finite, non-negative numbers.
fn check_prices(ck: &mut Checker, at: &str, p: &ProviderConf) {
    let served = p.models.pairs();
    for (model, price) in &p.prices {
        let at = format!("{at}.prices.{model}");
        if !served.iter().any(|(public, _)| public == model) {
            ck.error(
                &at,
                format!("the provider does not serve '{model}' (prices are per public model name it lists)"),
            );
        }
        for (field, v) in [
            ("input", Some(price.input)),
            ("output", Some(price.output)),
            ("cached_input", price.cached_input),
        ] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                ck.error(format!("{at}.{field}"), format!("{v}: a price must be a number >= 0"));
            }
        }
    }
}

fn check_bulkhead(ck: &mut Checker, at: &str, b: &BulkheadConf) {
    if b.max_concurrent == 0 {
        ck.error(format!("{at}.max_concurrent"), "must be at least 1");
    }
    if b.queue_timeout.0.is_zero() && b.queue > 0 {
        ck.error(format!("{at}.queue_timeout"), "must be above zero when queue > 0");
    }
    if b.max_queue_age.is_some_and(|d| d.0.is_zero()) {
        ck.error(format!("{at}.max_queue_age"), "must be above zero");
    }
    let mut reserved = 0;
    for (class, c) in &b.classes {
        let at = format!("{at}.classes.{class}");
        if let Some(share) = c.reserved {
            reserved += share.of(b.max_concurrent);
        }
        if c.queue_timeout.is_some_and(|d| d.0.is_zero()) {
            ck.error(format!("{at}.queue_timeout"), "must be above zero");
        }
        if c.max_queue_age.is_some_and(|d| d.0.is_zero()) {
            ck.error(format!("{at}.max_queue_age"), "must be above zero");
        }
    }
    if reserved > b.max_concurrent {
        ck.error(
            format!("{at}.classes"),
            format!(
                "the classes reserve {reserved} slots in all, more than max_concurrent ({})",
                b.max_concurrent
            ),
        );
    }
    if let Some(shed) = &b.shed {
        if shed.target.0.is_zero() {
            ck.error(format!("{at}.shed.target"), "must be above zero");
        }
        if shed.interval.0.is_zero() {
            ck.error(format!("{at}.shed.interval"), "must be above zero");
        }
    }
}

fn check_adaptive(ck: &mut Checker, at: &str, a: &AdaptiveConf, ceiling: usize) {
    if a.floor == 0 {
        ck.error(format!("{at}.floor"), "must be at least 1");
    } else if a.floor > ceiling {
        ck.error(
            format!("{at}.floor"),
            format!("must be at most the bulkhead's max_concurrent ({ceiling}), the ceiling"),
        );
    }
    if !(a.backoff > 0.0 && a.backoff < 1.0) {
        ck.error(format!("{at}.backoff"), "must be between 0 and 1 (exclusive)");
    }
    if !(a.tolerance > 1.0 && a.tolerance.is_finite()) {
        ck.error(format!("{at}.tolerance"), "must be above 1");
    }
}

/// Traces go to an OTLP/HTTP collector over plain HTTP: weir carries no TLS
/// client for them (run a collector on loopback or in the cluster).
fn check_tracing(ck: &mut Checker, t: &TracingConf) {
    let uri = t.endpoint.parse::<http::Uri>().ok();
    match uri.as_ref().map(|u| (u.scheme_str(), u.authority().is_some())) {
        Some((Some("http"), true)) => {}
        Some((Some("https"), _)) => ck.error(
            "tracing.endpoint",
            format!(
                "'{}': weir exports traces over plain HTTP only; send them to a collector on loopback or in the cluster (http://host:4318)",
                t.endpoint
            ),
        ),
        _ => ck.error(
            "tracing.endpoint",
            format!("'{}' is not an OTLP/HTTP endpoint like http://127.0.0.1:4318", t.endpoint),
        ),
    }
    if !(0.0..=1.0).contains(&t.sample) {
        ck.error(
            "tracing.sample",
            format!("{} is not a share between 0.0 and 1.0", t.sample),
        );
    }
    if t.interval.0.is_zero() || t.timeout.0.is_zero() {
        ck.error("tracing", "interval and timeout must be above zero");
    }
    if t.queue == 0 {
        ck.error("tracing.queue", "must be at least 1");
    }
}

/// The admin API is open only on loopback: anywhere else it needs a token,
/// and a token that is empty (say an empty `${WEIR_ADMIN_TOKEN}`) would
/// let anyone in, so it is an error rather than "no token".
fn check_admin(ck: &mut Checker, a: &AdminConf) {
    let addr = a.listen.parse::<std::net::SocketAddr>();
    if addr.is_err() {
        ck.error(
            "admin.listen",
            format!("'{}' is not an address like 127.0.0.1:9901", a.listen),
        );
    }
    match a.token.as_deref() {
        Some(t) if t.trim().is_empty() => ck.error(
            "admin.token",
            "must not be empty (an empty token would admit anyone); remove the field to run the admin API without a token on loopback",
        ),
        Some(_) => {}
        None => {
            if let Ok(addr) = addr {
                if !addr.ip().is_loopback() {
                    ck.error(
                        "admin.listen",
                        format!(
                            "'{}' is not a loopback address, so admin.token is required (the admin API can reload and reveals the config)",
                            a.listen
                        ),
                    );
                }
            }
        }
    }
}
