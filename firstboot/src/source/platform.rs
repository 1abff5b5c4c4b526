//! The cloud or machine type, which decides the platform sources.

use super::SourceError;

/// The cloud or machine type, which decides the platform sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Platform {
    Ec2,
    Gcp,
    Azure,
    OpenStack,
    DigitalOcean,
    Hetzner,
    Qemu,
    /// Bare metal or unknown: local sources only.
    Metal,
}

impl Platform {
    pub const ALL: [Platform; 8] = [
        Platform::Ec2,
        Platform::Gcp,
        Platform::Azure,
        Platform::OpenStack,
        Platform::DigitalOcean,
        Platform::Hetzner,
        Platform::Qemu,
        Platform::Metal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ec2 => "ec2",
            Platform::Gcp => "gcp",
            Platform::Azure => "azure",
            Platform::OpenStack => "openstack",
            Platform::DigitalOcean => "digitalocean",
            Platform::Hetzner => "hetzner",
            Platform::Qemu => "qemu",
            Platform::Metal => "metal",
        }
    }

    /// The metadata service's base URL on the platform (overridable per context).
    pub fn default_endpoint(self) -> Option<&'static str> {
        match self {
            Platform::Ec2
            | Platform::Gcp
            | Platform::Azure
            | Platform::OpenStack
            | Platform::DigitalOcean
            | Platform::Hetzner => Some("http://169.254.169.254"),
            Platform::Qemu | Platform::Metal => None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Platform {
    type Err = SourceError;
    fn from_str(s: &str) -> Result<Self, SourceError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "ec2" | "aws" => Platform::Ec2,
            "gcp" | "gce" => Platform::Gcp,
            "azure" => Platform::Azure,
            "openstack" => Platform::OpenStack,
            "digitalocean" => Platform::DigitalOcean,
            "hetzner" => Platform::Hetzner,
            "qemu" => Platform::Qemu,
            "metal" | "none" => Platform::Metal,
            other => {
                return Err(SourceError::Invalid(format!(
                    "unknown platform `{other}`; expected one of ec2, gcp, azure, openstack, digitalocean, hetzner, qemu, metal"
                )))
            }
        })
    }
}

/// How the platform was chosen (reported in logs and status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformChoice {
    Flag,
    KernelArgument,
    Dmi(String),
    Default,
}
