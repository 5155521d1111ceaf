//! From SRV records (RFC 2782) to endpoints: port and weight per record, one priority level.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::proto::rr::rdata::SRV;

use super::resolver::{META_SRV_PRIORITY, META_SRV_TARGET};
use crate::Endpoint;

/// The parts of an SRV record that make endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SrvRecord {
    pub target: String,
    pub port: u16,
    pub weight: u16,
}

impl SrvRecord {
    /// The record, unless it cannot name an endpoint: target `.` means "the service is
    /// decidedly not available at this domain" (RFC 2782), and port 0 reaches nothing.
    pub(crate) fn usable(srv: &SRV) -> Option<SrvRecord> {
        if srv.target.is_root() || srv.port == 0 {
            tracing::debug!(target = %srv.target, port = srv.port, "skipping an SRV record that names no service");
            return None;
        }
        Some(SrvRecord {
            target: srv.target.to_ascii(),
            port: srv.port,
            weight: srv.weight,
        })
    }
}

/// The endpoints of one priority level: every address of every target, with the record's
/// port and its weight as `Endpoint.weight` (each address of a target gets the full weight).
/// Heavier targets come first, so pick_first starts on one; two records that reach the same
/// address add their weights.
pub(crate) fn endpoints(
    priority: u16,
    mut resolved: Vec<(SrvRecord, Vec<IpAddr>)>,
) -> Vec<Endpoint> {
    resolved.sort_by(|(a, _), (b, _)| {
        b.weight
            .cmp(&a.weight)
            .then_with(|| a.target.cmp(&b.target))
            .then_with(|| a.port.cmp(&b.port))
    });
    let mut out: Vec<Endpoint> = Vec::new();
    for (rec, ips) in resolved {
        for ip in ips {
            let addr = SocketAddr::new(ip, rec.port).into();
            if let Some(same) = out.iter_mut().find(|e| e.addr == addr) {
                same.weight = same.weight.saturating_add(u32::from(rec.weight));
                continue;
            }
            out.push(
                Endpoint::new(SocketAddr::new(ip, rec.port))
                    .with_weight(u32::from(rec.weight))
                    .with_metadata(META_SRV_TARGET, rec.target.clone())
                    .with_metadata(META_SRV_PRIORITY, priority.to_string()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::Name;

    fn rec(target: &str, port: u16, weight: u16) -> SrvRecord {
        SrvRecord {
            target: target.into(),
            port,
            weight,
        }
    }

    #[test]
    fn unusable_records_are_skipped() {
        let name = |s: &str| Name::from_ascii(s).unwrap();
        assert!(SrvRecord::usable(&SRV::new(0, 1, 50051, Name::root())).is_none());
        assert!(SrvRecord::usable(&SRV::new(0, 1, 0, name("a.example."))).is_none());
        assert_eq!(
            SrvRecord::usable(&SRV::new(0, 3, 50051, name("a.example."))),
            Some(rec("a.example.", 50051, 3))
        );
    }

    #[test]
    fn weights_ports_and_order() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let eps = endpoints(
            10,
            vec![
                (rec("b.", 2, 1), vec![ip("10.0.0.2")]),
                (rec("a.", 1, 3), vec![ip("10.0.0.1"), ip("::1")]),
                (rec("c.", 1, 2), vec![ip("10.0.0.1")]), // same address as a.: weights add
            ],
        );
        let got: Vec<(String, u32)> = eps.iter().map(|e| (e.addr.to_string(), e.weight)).collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:1".to_owned(), 5),
                ("[::1]:1".to_owned(), 3),
                ("10.0.0.2:2".to_owned(), 1)
            ]
        );
        assert_eq!(eps[0].metadata[META_SRV_PRIORITY], "10");
        assert_eq!(eps[2].metadata[META_SRV_TARGET], "b.");
    }
}
