//! The `/` filter: whitespace-separated terms, all of which must match.
//!
//! - `host:198.19.1` matches a flow whose source or destination address contains the text;
//! - `port:5201` matches a flow with that source or destination port;
//! - `dev:cali` matches a flow that crossed a device whose name contains the text, and the hops
//!   of such devices;
//! - a bare term matches any of these, or the protocol name (`tcp`).
//!
//! Host/port/bare terms narrow the flows and events; only `dev:` terms narrow the hops table,
//! so that typing an address never empties it.

use super::model::{AnomalySample, Flow};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Host(String),
    Port(u16),
    Dev(String),
    Any(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    text: String,
    terms: Vec<Term>,
}

impl Filter {
    pub fn parse(text: &str) -> Self {
        let terms = text
            .split_whitespace()
            .filter_map(|word| {
                let (prefix, value) = word.split_once(':').unwrap_or(("", word));
                let value = value.to_ascii_lowercase();
                match prefix {
                    "host" if !value.is_empty() => Some(Term::Host(value)),
                    // A port that does not parse matches nothing, as a typo should.
                    "port" => Some(Term::Port(value.parse().unwrap_or(0))),
                    "dev" if !value.is_empty() => Some(Term::Dev(value)),
                    "host" | "dev" => None,
                    // IPv6 addresses contain colons: anything else is a bare term.
                    _ => Some(Term::Any(word.to_ascii_lowercase())),
                }
            })
            .collect();
        Self {
            text: text.trim().to_owned(),
            terms,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// A flow with the names of the devices it crossed.
    pub fn matches_flow<'a>(&self, flow: &Flow, devices: impl Iterator<Item = &'a str>) -> bool {
        if self.terms.is_empty() {
            return true;
        }
        let devices: Vec<String> = devices.map(str::to_ascii_lowercase).collect();
        let src = flow.src.to_string();
        let dst = flow.dst.to_string();
        let proto = flow.proto_name();
        self.terms.iter().all(|term| match term {
            Term::Host(h) => src.contains(h.as_str()) || dst.contains(h.as_str()),
            Term::Port(p) => *p != 0 && (flow.sport == *p || flow.dport == *p),
            Term::Dev(d) => devices.iter().any(|name| name.contains(d.as_str())),
            Term::Any(a) => {
                src.contains(a.as_str())
                    || dst.contains(a.as_str())
                    || a.parse::<u16>()
                        .is_ok_and(|p| flow.sport == p || flow.dport == p)
                    || devices.iter().any(|name| name.contains(a.as_str()))
                    || proto == *a
            }
        })
    }

    /// Hops are narrowed by `dev:` terms only.
    pub fn matches_hop(&self, ifname: &str) -> bool {
        let name = ifname.to_ascii_lowercase();
        self.terms.iter().all(|term| match term {
            Term::Dev(d) => name.contains(d.as_str()),
            _ => true,
        })
    }

    pub fn matches_event(&self, event: &AnomalySample) -> bool {
        if self.terms.is_empty() {
            return true;
        }
        let device = event.ifname.as_deref().into_iter();
        match &event.flow {
            Some(flow) => self.matches_flow(flow, device),
            None => {
                let name = event.ifname.as_deref().unwrap_or("").to_ascii_lowercase();
                self.terms.iter().all(|term| match term {
                    Term::Dev(d) | Term::Any(d) => name.contains(d.as_str()),
                    Term::Host(_) | Term::Port(_) => false,
                })
            }
        }
    }
}
