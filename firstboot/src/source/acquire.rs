//! Finding the user data: the sources in order ([`source_order`]), and [`acquire`], which
//! asks each in turn, classifies what it finds ([`super::userdata`]) and stages an
//! Ignition config ([`crate::ignition::stage`]). Nothing is written.

use std::time::Instant;

use nodeimage_core::config::{NodeConfig, NODE_CONFIG_IGNITION_PATH};

use super::userdata::{self, UserData};
use super::{
    azure, cmdline, digitalocean, ec2, fwcfg, gcp, hetzner, nocloud, nodeconfig, openstack,
    Acquired, Attempt, DataSource, Platform, SourceContext, SourceError,
};
use crate::ignition::StagedIgnition;

/// The sources to try, in order (see the module documentation).
pub fn source_order(
    ctx: &SourceContext,
    platform: Platform,
) -> Result<Vec<Box<dyn DataSource>>, SourceError> {
    if let Some(url_source) = cmdline::ConfigUrlSource::from_context(ctx)? {
        return Ok(vec![Box::new(url_source)]);
    }
    let mut out: Vec<Box<dyn DataSource>> =
        vec![Box::new(nodeconfig::NodeConfigPartition::new(ctx))];
    // The local fallbacks a platform already tried as one of its own sources.
    let (mut fw_cfg_done, mut config_drive_done) = (false, false);
    match platform {
        Platform::Ec2 => out.push(Box::new(ec2::Ec2Source::new(ctx))),
        Platform::Gcp => out.push(Box::new(gcp::GcpSource::new(ctx))),
        Platform::Azure => {
            out.push(Box::new(azure::AzureImdsSource::new(ctx)));
            out.push(Box::new(azure::AzureOvfSource::new(ctx)));
        }
        Platform::OpenStack => {
            out.push(Box::new(openstack::ConfigDriveSource::new(ctx)));
            config_drive_done = true;
            out.push(Box::new(openstack::OpenStackMetadataSource::new(ctx)));
        }
        Platform::DigitalOcean => out.push(Box::new(digitalocean::DigitalOceanSource::new(ctx))),
        Platform::Hetzner => out.push(Box::new(hetzner::HetznerSource::new(ctx))),
        Platform::Qemu => {
            out.push(Box::new(fwcfg::FwCfgSource::new(ctx)));
            fw_cfg_done = true;
        }
        Platform::Metal => {}
    }
    if !fw_cfg_done {
        out.push(Box::new(fwcfg::FwCfgSource::new(ctx)));
    }
    out.push(Box::new(nocloud::NoCloudSource::new(ctx)));
    if !config_drive_done {
        out.push(Box::new(openstack::ConfigDriveSource::new(ctx)));
    }
    Ok(out)
}

/// Find the user data, parse it into a node config and stage any Ignition config.
/// Writes nothing.
pub fn acquire(ctx: &SourceContext) -> Result<Acquired, SourceError> {
    let start = Instant::now();
    let (platform, platform_choice) = ctx.platform()?;
    tracing::info!(platform = %platform, choice = ?platform_choice, "platform");
    let mut attempts = Vec::new();
    for source in source_order(ctx, platform)? {
        let name = source.name();
        let t = Instant::now();
        match source.user_data() {
            Ok(Some(data)) if data.iter().all(u8::is_ascii_whitespace) => {
                tracing::info!(source = name, "present, empty user data");
                attempts.push(Attempt {
                    source: name.into(),
                    outcome: "present, no user data".into(),
                });
            }
            Ok(Some(data)) => {
                tracing::info!(
                    source = name,
                    bytes = data.len(),
                    ms = t.elapsed().as_millis() as u64,
                    "user data found"
                );
                let (node_config, ignition) = interpret(&source.document(), &data, ctx)?;
                let metadata = source.metadata()?;
                return Ok(Acquired {
                    source: name.to_string(),
                    platform,
                    platform_choice,
                    metadata,
                    node_config,
                    ignition,
                    attempts,
                    elapsed: start.elapsed(),
                });
            }
            Ok(None) => {
                tracing::info!(source = name, "present, no user data");
                attempts.push(Attempt {
                    source: name.into(),
                    outcome: "present, no user data".into(),
                });
            }
            Err(SourceError::Absent { reason, .. }) => {
                tracing::debug!(source = name, reason = %reason, "not present");
                attempts.push(Attempt {
                    source: name.into(),
                    outcome: format!("not present: {reason}"),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Err(SourceError::NoSource { platform, attempts })
}

/// The node config the user data carries, and the staged Ignition config when it is one
/// (fetched, verified and validated; the network uses the context's timeouts).
fn interpret(
    source_name: &str,
    data: &[u8],
    ctx: &SourceContext,
) -> Result<(NodeConfig, Option<StagedIgnition>), SourceError> {
    match userdata::classify(source_name, data)? {
        UserData::NodeConfig(nc) => Ok((*nc, None)),
        UserData::Ignition(raw) => {
            let staged = crate::ignition::stage(source_name, &raw, ctx.timeouts)?;
            let nc = node_config_in(source_name, &staged)?;
            Ok((nc, Some(staged)))
        }
    }
}

/// The native node config an Ignition config carries at [`NODE_CONFIG_IGNITION_PATH`].
fn node_config_in(source_name: &str, staged: &StagedIgnition) -> Result<NodeConfig, SourceError> {
    let Some(yaml) = staged.node_config_yaml() else {
        return Err(SourceError::format(
            source_name,
            format!("the Ignition config carries no node config: expected a storage.files entry at {NODE_CONFIG_IGNITION_PATH}"),
        ));
    };
    let text = std::str::from_utf8(yaml).map_err(|_| {
        SourceError::format(
            source_name,
            format!("Ignition file {NODE_CONFIG_IGNITION_PATH}: not UTF-8"),
        )
    })?;
    Ok(NodeConfig::parse_untrusted(
        &format!("{source_name}: {NODE_CONFIG_IGNITION_PATH}"),
        text,
    )?)
}
