//! The `/` filter: whitespace-separated terms, all of which must match.
//!
//! - `host:198.19.1` matches a flow whose source or destination address contains the text;
//! - `port:5201` matches a flow with that source or destination port;
//! - `dev:cali` matches a flow that crossed a device whose name contains the text, and the hops
//!   of such devices;
//! - `pod:web` matches what belongs to a pod whose name contains the text (`pod:shop/web-0`:
//!   namespace/name): the hops of its veth, the flows that crossed one, its events;
//! - `ns:shop` the same for the pods of a Kubernetes namespace whose name contains the text;
//! - a bare term matches any of these, or the protocol name (`tcp`).
//!
//! Host/port/bare terms narrow the flows and events; only `dev:`, `pod:` and `ns:` terms
//! narrow the hops table, so that typing an address never empties it.

use super::model::{AnomalySample, Flow, PodId};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Host(String),
    Port(u16),
    Dev(String),
    Pod(String),
    Ns(String),
    Any(String),
}

impl Term {
    /// Whether a device and the pod at it match a term about devices or pods; `None` for the
    /// terms about addresses and ports.
    fn place(&self, device: &str, pod: Option<&PodId>) -> Option<bool> {
        match self {
            Term::Dev(d) => Some(device.contains(d.as_str())),
            Term::Pod(p) => Some(pod.is_some_and(|pod| pod_named(pod, p))),
            Term::Ns(n) => Some(pod.is_some_and(|pod| pod.namespace.contains(n.as_str()))),
            Term::Any(a) => Some(
                device.contains(a.as_str())
                    || pod.is_some_and(|pod| pod_named(pod, a) || pod.namespace.contains(a)),
            ),
            Term::Host(_) | Term::Port(_) => None,
        }
    }
}

/// `pod:` text: in the pod's name, or in `namespace/name` when it has a slash.
fn pod_named(pod: &PodId, text: &str) -> bool {
    pod.name.contains(text) || (text.contains('/') && pod.to_string().contains(text))
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
                    "pod" if !value.is_empty() => Some(Term::Pod(value)),
                    "ns" if !value.is_empty() => Some(Term::Ns(value)),
                    "host" | "dev" | "pod" | "ns" => None,
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

    /// A flow with the places it was seen: each device's name and the pod at it.
    pub fn matches_flow<'a>(
        &self,
        flow: &Flow,
        places: impl Iterator<Item = (&'a str, Option<&'a PodId>)>,
    ) -> bool {
        if self.terms.is_empty() {
            return true;
        }
        let places: Vec<(String, Option<&PodId>)> = places
            .map(|(device, pod)| (device.to_ascii_lowercase(), pod))
            .collect();
        let src = flow.src.to_string();
        let dst = flow.dst.to_string();
        let proto = flow.proto_name();
        let anywhere = |term: &Term| {
            places
                .iter()
                .any(|(device, pod)| term.place(device, *pod) == Some(true))
        };
        self.terms.iter().all(|term| match term {
            Term::Host(h) => src.contains(h.as_str()) || dst.contains(h.as_str()),
            Term::Port(p) => *p != 0 && (flow.sport == *p || flow.dport == *p),
            Term::Dev(_) | Term::Pod(_) | Term::Ns(_) => anywhere(term),
            Term::Any(a) => {
                src.contains(a.as_str())
                    || dst.contains(a.as_str())
                    || a.parse::<u16>()
                        .is_ok_and(|p| flow.sport == p || flow.dport == p)
                    || anywhere(term)
                    || proto == *a
            }
        })
    }

    /// Hops are narrowed by `dev:`, `pod:` and `ns:` terms only.
    pub fn matches_hop(&self, ifname: &str, pod: Option<&PodId>) -> bool {
        let name = ifname.to_ascii_lowercase();
        self.terms.iter().all(|term| match term {
            Term::Dev(_) | Term::Pod(_) | Term::Ns(_) => term.place(&name, pod) == Some(true),
            _ => true,
        })
    }

    pub fn matches_event(&self, event: &AnomalySample) -> bool {
        if self.terms.is_empty() {
            return true;
        }
        let device = event.ifname.as_deref().unwrap_or("");
        let pod = event.pod.as_ref();
        match &event.flow {
            Some(flow) => self.matches_flow(flow, std::iter::once((device, pod))),
            None => {
                let name = device.to_ascii_lowercase();
                self.terms
                    .iter()
                    .all(|term| term.place(&name, pod).unwrap_or(false))
            }
        }
    }
}
