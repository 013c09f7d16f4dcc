//! Get-Service, Stop-Service and Start-Service for one server's transport services
//! (`mailflow service list|stop|start`). Exchange runs each as a Windows service; here
//! they are task groups of one process (DESIGN §1), and only Transport
//! (MSExchangeTransport) can be stopped alone: the seeds stop it to show Mailbox
//! Transport Submission handing mail to another server's Transport. server.rs does the
//! stopping and starting ([`ServiceControl`]); this module names the services and
//! shapes the answers.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// The transport services of a server, in Get-Service's order (by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    MailboxDelivery,
    FrontEndTransport,
    MailboxSubmission,
    Transport,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::MailboxDelivery,
        Service::FrontEndTransport,
        Service::MailboxSubmission,
        Service::Transport,
    ];

    /// The Windows service name Exchange gives it.
    pub fn name(self) -> &'static str {
        match self {
            Service::MailboxDelivery => "MSExchangeDelivery",
            Service::FrontEndTransport => "MSExchangeFrontEndTransport",
            Service::MailboxSubmission => "MSExchangeSubmission",
            Service::Transport => "MSExchangeTransport",
        }
    }

    pub fn display_name(self) -> &'static str {
        match self {
            Service::MailboxDelivery => "Microsoft Exchange Mailbox Transport Delivery",
            Service::FrontEndTransport => "Microsoft Exchange Frontend Transport",
            Service::MailboxSubmission => "Microsoft Exchange Mailbox Transport Submission",
            Service::Transport => "Microsoft Exchange Transport",
        }
    }

    /// The short names the CLI takes, besides the service name.
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Service::MailboxDelivery => &["delivery", "mailbox-delivery"],
            Service::FrontEndTransport => &["frontend", "front-end", "frontend-transport"],
            Service::MailboxSubmission => &["submission", "mailbox-submission"],
            Service::Transport => &["transport"],
        }
    }

    /// A service by its name or short name, in any case.
    pub fn parse(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| {
            s.name().eq_ignore_ascii_case(name)
                || s.aliases().iter().any(|a| a.eq_ignore_ascii_case(name))
        })
    }

    /// Whether Stop-Service/Start-Service act on it here.
    pub fn can_stop(self) -> bool {
        self == Service::Transport
    }
}

/// Running or Stopped, as Get-Service prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Running,
    Stopped,
}

/// One row of `service list` (Get-Service's Status, Name, DisplayName).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceInfo {
    pub server: String,
    pub status: Status,
    pub name: String,
    pub display_name: String,
}

impl ServiceInfo {
    pub fn new(server: &str, service: Service, status: Status) -> ServiceInfo {
        ServiceInfo {
            server: server.to_string(),
            status,
            name: service.name().to_string(),
            display_name: service.display_name().to_string(),
        }
    }
}

/// What the admin API asks of the running server (server.rs implements it).
pub trait ServiceControl: Send + Sync {
    /// Every service of this server with its status.
    fn list(&self) -> BoxFuture<'_, Vec<ServiceInfo>>;
    /// Stop-Service: stops `service` (only Transport can stop); stopping a stopped
    /// service changes nothing. Returns its row afterwards.
    fn stop(&self, service: Service) -> BoxFuture<'_, anyhow::Result<ServiceInfo>>;
    /// Start-Service: starts `service` again; starting a running one changes nothing.
    fn start(&self, service: Service) -> BoxFuture<'_, anyhow::Result<ServiceInfo>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_found_by_exchange_name_or_short_name_in_any_case() {
        assert_eq!(Service::parse("transport"), Some(Service::Transport));
        assert_eq!(
            Service::parse("msexchangetransport"),
            Some(Service::Transport)
        );
        assert_eq!(
            Service::parse("MSExchangeFrontEndTransport"),
            Some(Service::FrontEndTransport)
        );
        assert_eq!(
            Service::parse("Submission"),
            Some(Service::MailboxSubmission)
        );
        assert_eq!(Service::parse("imap"), None);
        assert!(Service::Transport.can_stop());
        assert!(!Service::FrontEndTransport.can_stop());
    }

    #[test]
    fn a_row_serializes_as_get_service_names_its_columns() {
        let row = ServiceInfo::new("MBX1", Service::Transport, Status::Stopped);
        assert_eq!(
            serde_json::to_value(&row).unwrap(),
            serde_json::json!({
                "Server": "MBX1",
                "Status": "Stopped",
                "Name": "MSExchangeTransport",
                "DisplayName": "Microsoft Exchange Transport",
            })
        );
    }
}
