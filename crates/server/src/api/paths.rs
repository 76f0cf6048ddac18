//! Case-insensitive routing: IoT Hub matches the literal segments of its
//! paths ignoring case (the Node device SDK writes `messages/devicebound`
//! where the reference writes `deviceBound`), while ids stay case-sensitive.
//!
//! axum matches exactly, so a request's path is rewritten, before routing,
//! to the spelling of the route it matches: literal segments are compared
//! by position against the route table, `{param}` segments match anything
//! and are never touched.

use axum::http::uri::{PathAndQuery, Uri};
use axum::http::Request;

/// One route pattern, split into segments.
#[derive(Debug, Clone)]
struct Pattern(Vec<Segment>);

#[derive(Debug, Clone)]
enum Segment {
    Literal(&'static str),
    Param,
}

impl Pattern {
    fn parse(path: &'static str) -> Self {
        Self(
            path.split('/')
                .map(|s| {
                    if s.starts_with('{') && s.ends_with('}') {
                        Segment::Param
                    } else {
                        Segment::Literal(s)
                    }
                })
                .collect(),
        )
    }

    /// How many literal segments differ only in case from `segments`, or
    /// `None` when the pattern does not match them at all.
    fn case_fixes(&self, segments: &[&str]) -> Option<usize> {
        if self.0.len() != segments.len() {
            return None;
        }
        let mut fixes = 0;
        for (pattern, actual) in self.0.iter().zip(segments) {
            if let Segment::Literal(lit) = pattern {
                if lit == actual {
                    continue;
                }
                if !lit.eq_ignore_ascii_case(actual) {
                    return None;
                }
                fixes += 1;
            }
        }
        Some(fixes)
    }

    fn literals(&self) -> usize {
        self.0.iter().filter(|s| matches!(s, Segment::Literal(_))).count()
    }
}

/// The route table's patterns, for rewriting request paths.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTable(Vec<Pattern>);

impl RouteTable {
    /// Adds a route pattern as axum spells it (`/devices/{id}`).
    pub(crate) fn add(&mut self, path: &'static str) {
        self.0.push(Pattern::parse(path));
    }

    /// The path spelled as the route it matches, or `None` when it needs no
    /// rewrite. A path that matches a route exactly is left alone, so a
    /// device whose id happens to spell a literal (`/devices/Query`) stays
    /// reachable as a device; otherwise the matching route with the most
    /// literal segments wins.
    pub(crate) fn canonical(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        let mut best: Option<&Pattern> = None;
        for pattern in &self.0 {
            match pattern.case_fixes(&segments) {
                Some(0) => return None,
                Some(_) if best.is_none_or(|b| pattern.literals() > b.literals()) => best = Some(pattern),
                _ => {}
            }
        }
        let pattern = best?;
        let rewritten: Vec<&str> = pattern
            .0
            .iter()
            .zip(&segments)
            .map(|(p, actual)| match p {
                Segment::Literal(lit) => *lit,
                Segment::Param => actual,
            })
            .collect();
        Some(rewritten.join("/"))
    }

    /// Rewrites a request's path in place (the query is kept as sent).
    pub(crate) fn rewrite<B>(&self, mut req: Request<B>) -> Request<B> {
        let Some(path) = self.canonical(req.uri().path()) else { return req };
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = req.uri().clone().into_parts();
        match PathAndQuery::try_from(pq) {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return req,
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        req
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        for p in [
            "/devices",
            "/devices/",
            "/devices/{id}",
            "/devices/query",
            "/devices/{id}/messages/deviceBound",
            "/devices/{id}/messages/deviceBound/{lockToken}",
            "/devices/{id}/messages/deviceBound/{lockToken}/abandon",
            "/configurations/testQueries",
        ] {
            t.add(p);
        }
        t
    }

    #[test]
    fn literal_segments_take_the_route_spelling_and_ids_keep_theirs() {
        let t = table();
        assert_eq!(
            t.canonical("/devices/MyDev/messages/devicebound").unwrap(),
            "/devices/MyDev/messages/deviceBound"
        );
        assert_eq!(
            t.canonical("/DEVICES/MyDev/Messages/DEVICEBOUND/AbC").unwrap(),
            "/devices/MyDev/messages/deviceBound/AbC"
        );
        assert_eq!(
            t.canonical("/devices/d/messages/devicebound/Tok/ABANDON").unwrap(),
            "/devices/d/messages/deviceBound/Tok/abandon"
        );
        assert_eq!(t.canonical("/configurations/testqueries").unwrap(), "/configurations/testQueries");
        assert_eq!(t.canonical("/Devices/").unwrap(), "/devices/");
    }

    #[test]
    fn exact_and_unknown_paths_are_left_alone() {
        let t = table();
        assert_eq!(t.canonical("/devices/d/messages/deviceBound"), None);
        assert_eq!(t.canonical("/devices/Query"), None, "an exact match as a device id wins");
        assert_eq!(t.canonical("/devices/d/messages/other"), None);
        assert_eq!(t.canonical("/nothing/here"), None);
    }

    #[test]
    fn the_route_with_more_literals_wins() {
        let t = table();
        // `/devices/QUERY` matches `/devices/{id}` exactly, so it stays a device.
        assert_eq!(t.canonical("/devices/QUERY"), None);
        let mut only_query = RouteTable::default();
        only_query.add("/devices/{id}/x");
        only_query.add("/devices/query/x");
        assert_eq!(only_query.canonical("/devices/QUERY/X").unwrap(), "/devices/query/x");
    }

    #[test]
    fn rewrite_keeps_the_query() {
        let t = table();
        let req = Request::builder()
            .uri("/devices/d/messages/devicebound/t?api-version=1&reject")
            .body(())
            .unwrap();
        let req = t.rewrite(req);
        assert_eq!(req.uri().path(), "/devices/d/messages/deviceBound/t");
        assert_eq!(req.uri().query(), Some("api-version=1&reject"));
    }
}
